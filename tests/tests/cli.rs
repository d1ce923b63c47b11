//! The `provbox` binary's contract: a bad config exits 64 with file, line and field
//! before any port is bound; `check` validates the config and the store, resolves the
//! files every policy's answer names (exit 65 when one is missing), and prints the
//! effective config with secrets redacted.
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
    // The example's 445HD policy sends boot_file 445HD.img: without an image, exit 65.
    s.put("445HD_3.4.8.198.img", b"x");
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
    assert!(text.contains("3 files: 2 firmware, 1 config"), "{text}");
    assert!(
        text.contains("model 450HD") && text.contains("3.4.8.198"),
        "{text}"
    );
    // Without --model/--mac: every policy and the defaults, each with its files.
    for section in [
        "== dhcp.policy[0] \"450HD over HTTPS\" ==",
        "== dhcp.policy[1] \"445HD over TFTP (66/67)\" ==",
        "== dhcp.policy[2] \"other AudioCodes by OUI\" ==",
        "== no policy matched: the [dhcp] defaults ==",
    ] {
        assert!(text.contains(section), "{section}:\n{text}");
    }
    assert!(
        text.contains("ok: 445HD.img resolves to 445HD_3.4.8.198.img"),
        "{text}"
    );
}

/// A config file in a scratch dir whose store is the scratch store.
fn lab_config(s: &Scratch, body: &str) -> std::path::PathBuf {
    let cfg = s.dir.path().join("lab.toml");
    std::fs::write(&cfg, format!("[store]\nroot = {:?}\n\n{body}", s.store())).unwrap();
    cfg
}

fn check(cfg: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = run(
        Command::new(provbox_bin())
            .args(["check", "--config"])
            .arg(cfg)
            .args(extra),
        Duration::from_secs(30),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn check_resolves_an_option_160_model_alias_to_the_newest_image() {
    let s = Scratch::new();
    s.put("450HD_3.4.8.198.img", b"old");
    s.put("UC450HD_3.4.9.1.img", b"new");
    s.put("cfg/00-90-8F-12-34-56.cfg", b"c");
    let cfg = lab_config(
        &s,
        r#"[dhcp]
server_ip = "192.0.2.1"

[[dhcp.policy]]
name = "450HD"
match = { vendor_class = "450HD" }
provisioning_url = "https://{server}/450HD.img;cfg/<MAC>.cfg"
"#,
    );
    let (code, text) = check(&cfg, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("firmware https://192.0.2.1/450HD.img")
            && text.contains(
                "ok: 450HD.img resolves to UC450HD_3.4.9.1.img (version 3.4.9.1, 3 bytes), the newest 450HD image in /"
            ),
        "{text}"
    );
    // No MAC: the phone's <MAC> cannot be filled, and check says so rather than guess.
    assert!(
        text.contains("not checked: <MAC> could not be filled"),
        "{text}"
    );
    // One phone: its <MAC> is filled and the config file found in another spelling.
    let (code, text) = check(&cfg, &["--model", "450HD", "--mac", "00:90:8f:12:34:56"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ok: cfg/00908f123456.cfg is cfg/00-90-8F-12-34-56.cfg"),
        "{text}"
    );
    assert!(text.contains("2 found, 0 missing"), "{text}");
}

#[test]
fn check_exits_65_naming_a_missing_image_and_the_field_that_names_it() {
    let s = Scratch::new();
    s.put("450HD_3.4.8.198.img", b"x");
    let cfg = lab_config(
        &s,
        r#"[dhcp]
server_ip = "192.0.2.1"

[[dhcp.policy]]
name = "445HD recovery"
match = { model = "445HD" }
tftp_server = "{server}"
boot_file = "445HD.img"

[[dhcp.policy]]
name = "440HD"
match = { vendor_class = "440HD" }
provisioning_url = "http://{server}/fw/440HD_2.2.16.501.img"

[[dhcp.policy]]
name = "elsewhere"
match = { vendor_class = "420HD" }
provisioning_url = "http://files.example.com/420HD.img"
"#,
    );
    let (code, text) = check(&cfg, &[]);
    assert_eq!(code, Some(65), "{text}");
    assert!(
        text.contains(
            "MISSING: 445HD.img — no firmware for model 445HD in /; put 445HD_<version>.img"
        ),
        "{text}"
    );
    assert!(text.contains("dhcp.policy[0].boot_file in"), "{text}");
    assert!(
        text.contains("MISSING: fw/440HD_2.2.16.501.img — not in the store")
            && text.contains("or change dhcp.policy[1].provisioning_url in"),
        "{text}"
    );
    // Another host's files are not this appliance's to check, and do not fail it.
    assert!(
        text.contains("not checked: files.example.com is not on this appliance"),
        "{text}"
    );
    assert!(
        text.contains("2 missing") && text.contains("FAILED (exit 65)"),
        "{text}"
    );
}

#[test]
fn check_shows_dhcp_on_with_reservations_only_and_warns_of_leases_access_refuses() {
    let s = Scratch::new();
    let reserved = r#"[dhcp]
bind = "127.0.0.1:10067"
server_ip = "192.0.2.1"

[[dhcp.reservation]]
mac = "00:90:8f:12:34:56"
ip = "192.0.2.50"
"#;
    let cfg = lab_config(
        &s,
        &format!(
            r#"{reserved}
[access]
allow = ["192.0.2.0/24"]

[http]
upload_dir = "/srv/phone-logs"

[[tftp.quirk]]
model = "420HD"
max_blksize = 512
tsize = false
"#
        ),
    );
    let (code, text) = check(&cfg, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("  dhcp   127.0.0.1:10067\n"), "{text}");
    assert!(
        text.contains("  files to 192.0.2.0/24 only ([access] allow)\n"),
        "{text}"
    );
    assert!(!text.contains("WARNING"), "{text}");
    assert!(
        text.contains("  http uploads into /srv/phone-logs\n"),
        "{text}"
    );
    assert!(
        text.contains("  tftp quirk for 420HD: blksize <= 512, windowsize <= -, tsize withheld\n"),
        "{text}"
    );
    // A reservation outside the allowed network: its phone would get an address and no files.
    let cfg = lab_config(
        &s,
        &format!("{reserved}\n[access]\nallow = [\"198.51.100.0/24\"]\n"),
    );
    let (code, text) = check(&cfg, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("WARNING: 192.0.2.50 reserved for 00:90:8f:12:34:56 (dhcp.reservation) is outside [access] allow"),
        "{text}"
    );
    assert!(text.contains("1 warning"), "{text}");
}

#[test]
fn check_effective_prints_toml_that_parses_back_with_secrets_redacted() {
    let s = Scratch::new();
    let hash = "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
    let cfg = lab_config(
        &s,
        &format!(
            r#"[dhcp]
server_ip = "192.0.2.1"
provisioning_url = "ftp://lab:hunter2@{{server}}/;<MAC>.cfg"

[[ftp.user]]
name = "lab"
password_hash = "{hash}"

[api]
token = "t0ken-s3cret"
"#
        ),
    );
    let out = run(
        Command::new(provbox_bin())
            .args(["check", "--effective", "--config"])
            .arg(&cfg)
            .env("PROVBOX_HTTP_BIND", "127.0.0.1:18080"),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in [&hash[7..], "hunter2", "t0ken-s3cret"] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    let parsed: provbox_config::Config =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed.ftp.users[0].name, "lab");
    assert_eq!(parsed.ftp.users[0].password_hash, "<redacted>");
    assert_eq!(parsed.api.token.as_deref(), Some("<redacted>"));
    assert_eq!(
        parsed.dhcp.provisioning_url.as_deref(),
        Some("ftp://lab:<redacted>@{server}/;<MAC>.cfg")
    );
    // The environment override is part of the effective config.
    assert_eq!(parsed.http.bind.to_string(), "127.0.0.1:18080");
    assert_eq!(parsed.store.root, s.store());
}
