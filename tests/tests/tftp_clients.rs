//! The TFTP server against real clients: curl, tftp-hpa's `tftp` and atftp fetch
//! files at every blksize and option and the bytes are compared by SHA-256; netascii,
//! block-number rollover, 50 clients at once, refusals (traversal, missing file,
//! WRQ), uploads, single-port mode and the transfer port range.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tftp_common;

use std::time::Duration;

use provbox_protocols::events::{EventKind, Proto};
use provbox_protocols::tftp::packet::{ErrorCode, Mode, Options, Packet, Request, TftpOption};
use provbox_protocols::tftp::{ClientOptions, fetch};
use tftp_common::*;
use tokio::process::Command;

/// The TFTP error code tftp-hpa's client reports (on stdout, exit status 0).
fn hpa_error(o: &std::process::Output) -> Option<u16> {
    let out = String::from_utf8_lossy(&o.stdout);
    let rest = out.split("Error code ").nth(1)?;
    rest.split(':').next()?.trim().parse().ok()
}

fn rrq(name: &str, mode: Mode, options: Vec<TftpOption>) -> Packet<'static> {
    Packet::Rrq(Request {
        filename: name.to_string(),
        mode,
        options,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_at_every_blksize() {
    let img = random_bytes(1_000_003, 1);
    let fx = start(&[("fw/450HD.img", &img)], |_| {}).await;
    let mut ev = fx.events();
    let out = fx.dir.path().join("out");
    for blksize in [None, Some(8u16), Some(1468), Some(8192), Some(65464)] {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "100", "-o"]).arg(&out);
        if let Some(b) = blksize {
            cmd.args(["--tftp-blksize", &b.to_string()]);
        }
        // blksize 8 is 125 001 blocks: it also crosses the 16-bit block-number rollover.
        let o = run(cmd.arg(fx.url("fw/450HD.img"))).await;
        assert!(o.status.success(), "curl blksize {blksize:?}: {}", show(&o));
        assert_eq!(
            sha256_file(&out),
            sha256(&img),
            "curl blksize {blksize:?} got other bytes"
        );
        let started = wait_for(&mut ev, "TransferStarted", |k| {
            matches!(k, EventKind::TransferStarted { .. })
        })
        .await;
        let EventKind::TransferStarted {
            proto,
            tftp: Some(t),
            size,
            ..
        } = started
        else {
            panic!("{started:?}")
        };
        assert_eq!(proto, Proto::Tftp);
        assert_eq!(size, img.len() as u64);
        assert_eq!(t.blksize, blksize.unwrap_or(512));
        assert_eq!(
            t.tsize,
            Some(img.len() as u64),
            "curl asks tsize; the OACK must carry it"
        );
        let fin = wait_for(&mut ev, "TransferFinished", |k| {
            matches!(k, EventKind::TransferFinished { .. })
        })
        .await;
        let EventKind::TransferFinished {
            bytes, sha256: s, ..
        } = fin
        else {
            unreachable!()
        };
        assert_eq!(bytes, img.len() as u64);
        assert_eq!(s, sha256(&img));
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_negotiates_every_option() {
    let img = random_bytes(3_000_000, 2);
    let fx = start(&[("450HD.img", &img)], |c| c.max_windowsize = 32).await;
    let mut ev = fx.events();
    let out = fx.dir.path().join("out");
    let port = fx.addr.port().to_string();
    for (blksize, window) in [(512u16, 1u16), (1468, 8), (1468, 64), (8192, 4)] {
        let o = run(Command::new("atftp")
            .args(["--trace", "--get", "-r", "450HD.img", "-l"])
            .arg(&out)
            .args([
                "--option",
                &format!("blksize {blksize}"),
                "--option",
                &format!("windowsize {window}"),
            ])
            .args([
                "--option",
                "tsize 0",
                "--option",
                "timeout 2",
                "127.0.0.1",
                &port,
            ]))
        .await;
        assert!(o.status.success(), "atftp {blksize}/{window}: {}", show(&o));
        assert_eq!(
            sha256_file(&out),
            sha256(&img),
            "atftp {blksize}/{window} got other bytes"
        );
        let granted = window.min(32);
        let trace =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        assert!(
            trace.contains(&format!("windowsize = {granted}"))
                || trace.contains(&format!("windowsize: {granted}")),
            "OACK windowsize {granted} not in atftp's trace:\n{}",
            &trace[..trace.len().min(3000)]
        );
        let started = wait_for(&mut ev, "TransferStarted", |k| {
            matches!(k, EventKind::TransferStarted { .. })
        })
        .await;
        let EventKind::TransferStarted { tftp: Some(t), .. } = started else {
            panic!("{started:?}")
        };
        assert_eq!(
            (t.blksize, t.windowsize, t.timeout_ms, t.tsize),
            (blksize, granted, 2000, Some(img.len() as u64))
        );
        assert!(
            t.rtt_us.is_some(),
            "the start event carries the handshake round trip"
        );
        wait_for(&mut ev, "TransferFinished", |k| {
            matches!(k, EventKind::TransferFinished { .. })
        })
        .await;
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_fetches_octet_and_netascii() {
    let img = random_bytes(700_000, 3);
    let text = b"system/type=450HD\nvoip/line/0/enabled=1\r\nodd\rcr\n\n\0nul\n".to_vec();
    let fx = start(
        &[("450HD.img", &img), ("cfg/00908f123456.cfg", &text)],
        |_| {},
    )
    .await;
    let port = fx.addr.port().to_string();
    let out = fx.dir.path().join("out");
    let o = run(Command::new("tftp")
        .args(["-m", "binary", "127.0.0.1", &port, "-c", "get", "450HD.img"])
        .arg(&out))
    .await;
    assert!(
        o.status.success() && o.stderr.is_empty() && hpa_error(&o).is_none(),
        "{}",
        show(&o)
    );
    assert_eq!(sha256_file(&out), sha256(&img));

    // netascii: tftp-hpa translates back, so the round trip must be byte-exact.
    let o = run(Command::new("tftp")
        .args([
            "-m",
            "netascii",
            "127.0.0.1",
            &port,
            "-c",
            "get",
            "cfg/00908f123456.cfg",
        ])
        .arg(&out))
    .await;
    assert!(
        o.status.success() && o.stderr.is_empty() && hpa_error(&o).is_none(),
        "{}",
        show(&o)
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        text,
        "netascii round trip through tftp-hpa"
    );

    // And on the wire: LF as CR LF, a bare CR as CR NUL.
    let raw = Raw::new(fx.addr).await;
    raw.send_to(
        &rrq("cfg/00908f123456.cfg", Mode::Netascii, vec![]),
        fx.addr,
    )
    .await;
    let (d, tid) = raw.expect().await;
    let Ok(Packet::Data { block: 1, data }) = Packet::decode(&d) else {
        panic!("{d:?}")
    };
    assert_eq!(
        data,
        b"system/type=450HD\r\nvoip/line/0/enabled=1\r\0\r\nodd\r\0cr\r\n\r\n\0nul\r\n"
    );
    raw.send_to(&Packet::Ack(1), tid).await;

    // Our own client decodes netascii too.
    let r = fetch(
        fx.addr,
        "cfg/00908f123456.cfg",
        ClientOptions {
            mode: Mode::Netascii,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(r.data.unwrap(), text);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_mib_at_blksize_512_rolls_over() {
    // 40 MiB / 512 = 81 920 blocks: the block number wraps past 65535 to 0.
    let img = random_bytes(40 << 20, 4);
    let fx = start(&[("big.img", &img)], |_| {}).await;
    let mut ev = fx.events();
    let out = fx.dir.path().join("out");
    let port = fx.addr.port().to_string();
    let o = run(Command::new("tftp")
        .args(["-m", "binary", "127.0.0.1", &port, "-c", "get", "big.img"])
        .arg(&out))
    .await;
    assert!(
        o.status.success() && o.stderr.is_empty() && hpa_error(&o).is_none(),
        "{}",
        show(&o)
    );
    assert_eq!(sha256_file(&out), sha256(&img));
    let fin = wait_for(&mut ev, "TransferFinished", |k| {
        matches!(k, EventKind::TransferFinished { .. })
    })
    .await;
    let EventKind::TransferFinished { bytes, .. } = fin else {
        unreachable!()
    };
    assert_eq!(bytes, 40 << 20);
    // Our client too, with a window across the rollover.
    let r = fetch(
        fx.addr,
        "big.img",
        ClientOptions {
            windowsize: Some(16),
            keep_data: false,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((r.len, r.sha256), (img.len() as u64, Some(sha256(&img))));
    assert_eq!(
        r.blocks, 81_921,
        "40 MiB at 512 is 81 920 full blocks and an empty final one"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_at_once() {
    let img = random_bytes(2 << 20, 5);
    let fx = start(&[("450HD.img", &img)], |_| {}).await;
    let mut ev = fx.events();
    let mut jobs = Vec::new();
    for i in 0..50 {
        let out = fx.dir.path().join(format!("out{i}"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "110", "--tftp-blksize", "1468", "-o"])
            .arg(&out)
            .arg(fx.url("450HD.img"));
        jobs.push(tokio::spawn(async move { (run(&mut cmd).await, out) }));
    }
    for j in jobs {
        let (o, out) = j.await.unwrap();
        assert!(o.status.success(), "{}", show(&o));
        assert_eq!(sha256_file(&out), sha256(&img));
    }
    let mut finished = 0;
    while finished < 50 {
        wait_for(&mut ev, "TransferFinished", |k| {
            matches!(k, EventKind::TransferFinished { .. })
        })
        .await;
        finished += 1;
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_is_refused_with_no_content() {
    let fx = start(&[("a/ok.cfg", b"ok\n")], |_| {}).await;
    std::fs::write(fx.dir.path().join("secret"), b"do not serve").unwrap();
    let mut ev = fx.events();
    let raw = Raw::new(fx.addr).await;
    for path in [
        "../secret",
        "/../secret",
        "a/../../secret",
        "..\\secret",
        "a\\..\\..\\secret",
        "%2e%2e/secret",
        ".hidden",
    ] {
        raw.send_to(&rrq(path, Mode::Octet, vec![]), fx.addr).await;
        let (d, _) = raw.expect().await;
        match Packet::decode(&d) {
            Ok(Packet::Error {
                code: ErrorCode::AccessViolation,
                ..
            }) => {}
            other => panic!("{path:?}: expected ERROR 2, got {other:?}"),
        }
        let r = wait_for(&mut ev, "TransferRefused", |k| {
            matches!(k, EventKind::TransferRefused { .. })
        })
        .await;
        let EventKind::TransferRefused {
            path: p, reason, ..
        } = r
        else {
            unreachable!()
        };
        assert_eq!(p, path);
        assert!(reason.contains("refused"), "{reason}");
    }
    // tftp-hpa sends the path as given: it gets an error and no file.
    let out = fx.dir.path().join("got");
    let port = fx.addr.port().to_string();
    let o = run(Command::new("tftp")
        .args(["-m", "binary", "127.0.0.1", &port, "-c", "get", "../secret"])
        .arg(&out))
    .await;
    assert_eq!(hpa_error(&o), Some(2), "{}", show(&o));
    assert!(std::fs::read(&out).unwrap_or_default().is_empty());
    // Leading slash stripped, backslashes normalised: these are served.
    for path in ["/a/ok.cfg", "\\a\\ok.cfg", "a//ok.cfg"] {
        raw.send_to(&rrq(path, Mode::Octet, vec![]), fx.addr).await;
        let (d, tid) = raw.expect().await;
        assert_eq!(
            Packet::decode(&d),
            Ok(Packet::Data {
                block: 1,
                data: b"ok\n"
            }),
            "{path:?}"
        );
        raw.send_to(&Packet::Ack(1), tid).await;
    }
    assert!(
        drain(&mut ev).iter().all(
            |k| !matches!(k, EventKind::TransferStarted { file, .. } if file.contains("secret"))
        )
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file_is_file_not_found() {
    let fx = start(&[("a.cfg", b"x")], |_| {}).await;
    let mut ev = fx.events();
    let o = run(Command::new("curl")
        .args(["-sS", "-o", "/dev/null"])
        .arg(fx.url("nope.img")))
    .await;
    assert_eq!(
        o.status.code(),
        Some(68),
        "curl's TFTP file-not-found exit code: {}",
        show(&o)
    );
    let r = wait_for(&mut ev, "TransferRefused", |k| {
        matches!(k, EventKind::TransferRefused { .. })
    })
    .await;
    assert!(
        matches!(&r, EventKind::TransferRefused { path, reason, .. } if path == "nope.img" && reason.contains("no such file")),
        "{r:?}"
    );
    let raw = Raw::new(fx.addr).await;
    raw.send_to(&rrq("nope.img", Mode::Octet, vec![]), fx.addr)
        .await;
    let (d, _) = raw.expect().await;
    assert!(matches!(
        Packet::decode(&d),
        Ok(Packet::Error {
            code: ErrorCode::FileNotFound,
            ..
        })
    ));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrq_is_refused_by_default() {
    let fx = start(&[("a.cfg", b"x")], |_| {}).await;
    let mut ev = fx.events();
    let src = fx.dir.path().join("log.txt");
    std::fs::write(&src, b"phone log").unwrap();
    let port = fx.addr.port().to_string();
    let o = run(Command::new("tftp")
        .args(["-m", "binary", "127.0.0.1", &port, "-c", "put"])
        .arg(&src)
        .arg("log.txt"))
    .await;
    assert_eq!(hpa_error(&o), Some(2), "{}", show(&o));
    let r = wait_for(&mut ev, "TransferRefused", |k| {
        matches!(k, EventKind::TransferRefused { .. })
    })
    .await;
    assert!(
        matches!(&r, EventKind::TransferRefused { reason, .. } if reason.contains("uploads are disabled")),
        "{r:?}"
    );
    assert!(!fx.root.join("log.txt").exists());
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_dir_takes_confined_capped_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let uploads = dir.path().join("uploads");
    let up = uploads.clone();
    let fx = start(&[("a.cfg", b"x")], move |c| {
        c.upload_dir = Some(up);
        c.upload_max = 100_000;
    })
    .await;
    let port = fx.addr.port().to_string();
    let log = random_bytes(60_000, 6);
    let src = fx.dir.path().join("log.bin");
    std::fs::write(&src, &log).unwrap();
    let o = run(Command::new("tftp")
        .args(["-m", "binary", "127.0.0.1", &port, "-c", "put"])
        .arg(&src)
        .arg("logs/00908f123456.log"))
    .await;
    assert!(
        o.status.success() && o.stderr.is_empty() && hpa_error(&o).is_none(),
        "{}",
        show(&o)
    );
    // The file is renamed into place after the last block: wait for it (bounded).
    let stored = uploads.join("logs/00908f123456.log");
    for _ in 0..200 {
        if stored.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read(&stored).unwrap(), log);

    // atftp with tsize over the cap: refused up front (disk full), nothing written.
    let big = fx.dir.path().join("big.bin");
    std::fs::write(&big, random_bytes(200_000, 7)).unwrap();
    let o = run(Command::new("atftp")
        .args(["--put", "-r", "big.log", "-l"])
        .arg(&big)
        .args(["--option", "tsize 200000", "127.0.0.1", &port]))
    .await;
    assert!(!o.status.success(), "{}", show(&o));
    // tftp-hpa sends no tsize: stopped when the cap is crossed.
    let o = run(Command::new("tftp")
        .args(["-m", "binary", "127.0.0.1", &port, "-c", "put"])
        .arg(&big)
        .arg("big2.log"))
    .await;
    assert_eq!(hpa_error(&o), Some(3), "{}", show(&o));
    // Traversal out of the upload directory.
    let o = run(Command::new("tftp")
        .args(["-m", "binary", "127.0.0.1", &port, "-c", "put"])
        .arg(&src)
        .arg("../escape.log"))
    .await;
    assert_eq!(hpa_error(&o), Some(2), "{}", show(&o));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut names: Vec<String> = walk(&uploads);
    names.sort();
    assert_eq!(
        names,
        ["logs/00908f123456.log"],
        "only the good upload is stored, no temporaries left"
    );
    assert!(!dir.path().join("escape.log").exists());
    fx.stop().await;
}

fn walk(d: &std::path::Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(
                walk(&p)
                    .into_iter()
                    .map(|n| format!("{}/{n}", e.file_name().to_string_lossy())),
            );
        } else {
            v.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_port_mode_answers_from_the_listening_port() {
    let img = random_bytes(500_000, 8);
    let fx = start(&[("450HD.img", &img)], |c| c.single_port = true).await;
    let r = fetch(
        fx.addr,
        "450HD.img",
        ClientOptions {
            blksize: Some(1468),
            windowsize: Some(8),
            tsize: true,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        r.server_tid, fx.addr,
        "the transfer must come from the listening port"
    );
    assert_eq!(r.sha256, Some(sha256(&img)));
    assert_eq!(
        r.oack,
        Some(Options {
            blksize: Some(1468),
            windowsize: Some(8),
            tsize: Some(500_000),
            timeout: None
        })
    );
    // Real clients, several at once, demultiplexed by address.
    let port = fx.addr.port().to_string();
    let mut jobs = Vec::new();
    for i in 0..10 {
        let out = fx.dir.path().join(format!("o{i}"));
        let mut cmd = Command::new("atftp");
        cmd.args(["--get", "-r", "450HD.img", "-l"])
            .arg(&out)
            .args([
                "--option",
                "blksize 1468",
                "--option",
                "windowsize 4",
                "127.0.0.1",
                &port,
            ]);
        jobs.push(tokio::spawn(async move { (run(&mut cmd).await, out) }));
        let out = fx.dir.path().join(format!("c{i}"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "100", "-o"])
            .arg(&out)
            .arg(fx.url("450HD.img"));
        jobs.push(tokio::spawn(async move { (run(&mut cmd).await, out) }));
    }
    for j in jobs {
        let (o, out) = j.await.unwrap();
        assert!(o.status.success(), "{}", show(&o));
        assert_eq!(sha256_file(&out), sha256(&img));
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_sockets_come_from_the_port_range() {
    let img = random_bytes(10_000, 9);
    // A range unlikely to be busy; several ports so a busy one is skipped.
    let fx = start(&[("a.img", &img)], |c| {
        c.port_range = Some("47310-47319".parse().unwrap())
    })
    .await;
    for _ in 0..5 {
        let r = fetch(fx.addr, "a.img", ClientOptions::default(), |_| {})
            .await
            .unwrap();
        assert!(
            (47310..=47319).contains(&r.server_tid.port()),
            "{}",
            r.server_tid
        );
        assert_ne!(r.server_tid, fx.addr);
        assert_eq!(r.sha256, Some(sha256(&img)));
    }
    fx.stop().await;
}
