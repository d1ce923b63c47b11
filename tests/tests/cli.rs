//! The `provbox` binary's contract: a bad config exits 64 with file, line and field
//! before any port is bound; `check` validates the example config and the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use provbox_tests::{Scratch, provbox_bin, run};

#[test]
fn a_bad_config_exits_64_naming_file_line_and_field_before_binding() {
    let s = Scratch::new();
    // Hold a port the config also names: had provbox tried to bind before validating,
    // it would fail with a bind error (status 1), not 64.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let cfg = s.dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        format!("[http]\nbind = \"127.0.0.1:{port}\"\n\n[dhcp]\nserver_ip = \"192.0.2.1\"\npool = \"198.51.100.10-198.51.100.20\"\n"),
    )
    .unwrap();
    let out = run(
        Command::new(provbox_bin())
            .args(["serve", "--config"])
            .arg(&cfg),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {err}");
    assert!(err.contains("bad.toml:6: `dhcp.pool`"), "stderr: {err}");
    assert!(err.contains("outside its subnet"), "stderr: {err}");
}

#[test]
fn a_syntax_error_exits_64_too() {
    let s = Scratch::new();
    let cfg = s.dir.path().join("typo.toml");
    std::fs::write(&cfg, "[tftp]\nblksize_max = 1468\n").unwrap();
    let out = run(
        Command::new(provbox_bin()).args(["serve", "-c"]).arg(&cfg),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {err}");
    assert!(
        err.contains("typo.toml:2:") && err.contains("blksize_max"),
        "stderr: {err}"
    );
}

#[test]
fn check_accepts_the_example_config_and_surveys_the_store() {
    let s = Scratch::new();
    s.put("450HD_3.4.8.198.img", b"x");
    s.put("00908f123456.cfg", b"y");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../provbox.example.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("root = \"./store\"", &format!("root = {:?}", s.store()));
    let cfg = s.dir.path().join("provbox.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = run(
        Command::new(provbox_bin())
            .args(["check", "--config"])
            .arg(&cfg),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("config: OK"), "{text}");
    assert!(text.contains("2 files: 1 firmware, 1 config"), "{text}");
    assert!(
        text.contains("model 450HD") && text.contains("3.4.8.198"),
        "{text}"
    );
}
