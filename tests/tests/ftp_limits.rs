//! FTP limits and lifecycle: the connection cap, the idle timeout, clean shutdown with
//! sessions and a transfer in flight, logins, and the confined, size-capped upload area.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod ftp_common;

use ftp_common::*;
use provbox_config::FtpUser;
use provbox_protocols::EventKind;
use tokio::io::AsyncReadExt;

// printf %s secret | sha256sum
const SECRET_HASH: &str = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_answers_421() {
    let ftp = Ftp::start(&[("a.cfg", b"a")], |c| c.max_connections = 2).await;
    let _a = Control::connect(ftp.addr).await;
    let _b = Control::connect(ftp.addr).await;
    let mut third = tokio::net::TcpStream::connect(ftp.addr).await.unwrap();
    let mut buf = String::new();
    tokio::time::timeout(BOUND, third.read_to_string(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf.starts_with("421"), "{buf:?}");
    drop(_a);
    // A slot frees when a session ends; wait (bounded) for the server to notice.
    let mut admitted = false;
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(ftp.addr).await.unwrap();
        let mut b = [0u8; 3];
        if tokio::time::timeout(BOUND, s.read_exact(&mut b))
            .await
            .is_ok_and(|r| r.is_ok())
            && &b == b"220"
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(admitted);
    ftp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed() {
    let ftp = Ftp::start(&[("a.cfg", b"a")], |c| {
        c.idle_timeout = provbox_config::Duration::from_secs(1)
    })
    .await;
    let mut c = Control::login(ftp.addr, "anonymous", "x").await;
    // Say nothing: the server says goodbye after the idle timeout (libunftp answers
    // 221 "Session timed out"), and closes.
    let (code, t) = c.reply().await;
    assert!(code == 221 || code == 421, "{t}");
    assert_eq!(c.reply().await.0, 0, "connection still open");
    ftp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sessions_and_stops_transfers() {
    let big = content(64 * 1024 * 1024, 3);
    let ftp = Ftp::start(&[("big.img", &big)], |_| {}).await;
    let mut rx = ftp.bus.subscribe();
    let mut idle = Control::login(ftp.addr, "anonymous", "x").await;
    let mut c = Control::login(ftp.addr, "anonymous", "x").await;
    let data = c.epsv(ftp.addr.ip()).await;
    let mut sock = tokio::net::TcpStream::connect(data).await.unwrap();
    assert_eq!(c.cmd("RETR big.img").await.0, 150);
    // Read a little, then stall so the transfer is in flight when the server stops.
    let mut first = vec![0u8; 4096];
    sock.read_exact(&mut first).await.unwrap();
    let addr = ftp.addr;
    ftp.stop().await; // returns: run() ended

    assert_eq!(
        idle.reply().await.0,
        0,
        "idle session still open after shutdown"
    );
    let aborted = wait_event(&mut rx, |k| matches!(k, EventKind::TransferAborted { .. }))
        .await
        .unwrap();
    assert!(
        matches!(&aborted, EventKind::TransferAborted { reason, .. } if reason.contains("shut down")),
        "{aborted:?}"
    );
    // The data connection ends short of the file.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(BOUND, sock.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.len() + first.len() < big.len());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins() {
    let ftp = Ftp::start(&[("a.cfg", b"a")], |c| {
        c.anonymous = false;
        c.users.push(FtpUser {
            name: "lab".into(),
            password_hash: SECRET_HASH.into(),
            upload: false,
        });
    })
    .await;
    let mut c = Control::connect(ftp.addr).await;
    assert_eq!(c.cmd("USER anonymous").await.0, 331);
    assert_eq!(c.cmd("PASS x").await.0, 530);
    assert_eq!(c.cmd("USER lab").await.0, 331);
    assert_eq!(c.cmd("PASS wrong").await.0, 530);
    assert_eq!(c.cmd("USER lab").await.0, 331);
    assert_eq!(c.cmd("PASS secret").await.0, 230);
    assert_eq!(c.cmd("SIZE a.cfg").await.0, 213);
    // Read-only user: no writes.
    assert_eq!(c.cmd("MKD x").await.0, 550);
    let out = curl(&[&format!("ftp://lab:secret@{}/a.cfg", ftp.addr)]).await;
    assert_eq!(out.stdout, b"a", "{}", text(&out));
    let out = curl(&[&ftp.url("/a.cfg")]).await;
    assert!(!ok(&out), "anonymous got in: {}", text(&out));
    ftp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_area_is_confined_and_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let area = tmp.path().join("uploads");
    let area2 = area.clone();
    let ftp = Ftp::start(&[("a.cfg", b"a")], move |c| {
        c.upload_dir = Some(area2);
        c.upload_max = 100_000;
        c.users.push(FtpUser {
            name: "tech".into(),
            password_hash: SECRET_HASH.into(),
            upload: true,
        });
    })
    .await;
    let up = |p: &str| format!("ftp://tech:secret@{}{p}", ftp.addr);
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.log");
    let data = content(99_999, 5);
    std::fs::write(&small, &data).unwrap();
    let large = dir.path().join("large.log");
    std::fs::write(&large, content(100_001, 6)).unwrap();

    // Within the cap: stored, readable back, visible in the listing.
    let out = curl(&["-T", small.to_str().unwrap(), &up("/upload/small.log")]).await;
    assert!(ok(&out), "{}", text(&out));
    assert_eq!(std::fs::read(area.join("small.log")).unwrap(), data);
    let out = curl(&[&up("/upload/small.log")]).await;
    assert_eq!(sha(&out.stdout), sha(&data), "{}", text(&out));
    let out = curl(&[&up("/")]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("upload"),
        "{}",
        text(&out)
    );

    // Over the cap: refused, and nothing left behind (not even the temporary file).
    let out = curl(&["-T", large.to_str().unwrap(), &up("/upload/large.log")]).await;
    assert!(!ok(&out), "oversized upload accepted: {}", text(&out));
    let left: Vec<_> = std::fs::read_dir(&area)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("small.log")]);

    // Outside the area, or climbing out of it: refused.
    let out = curl(&["-T", small.to_str().unwrap(), &up("/a2.cfg")]).await;
    assert!(
        !ok(&out) && !ftp.root.join("a2.cfg").exists(),
        "{}",
        text(&out)
    );
    let mut c = Control::login(ftp.addr, "tech", "secret").await;
    for cmd in [
        "MKD /upload/../x",
        "MKD /x",
        "DELE /a.cfg",
        "MKD /upload/.hidden",
        "RNFR /upload/../../etc",
    ] {
        let (code, t) = c.cmd(cmd).await;
        assert_eq!(code, 550, "{cmd}: {t}");
    }
    // Directory and file management inside it.
    assert_eq!(c.cmd("MKD /upload/logs").await.0, 257);
    assert_eq!(c.cmd("RNFR /upload/small.log").await.0, 350);
    assert_eq!(c.cmd("RNTO /upload/logs/small.log").await.0, 250);
    assert!(area.join("logs/small.log").is_file());
    assert_eq!(
        c.cmd("RMD /upload/logs").await.0,
        550,
        "non-empty directory removed"
    );
    assert_eq!(c.cmd("DELE /upload/logs/small.log").await.0, 250);
    assert_eq!(c.cmd("RMD /upload/logs").await.0, 250);

    // A symlink planted in the area does not lead out of it.
    std::os::unix::fs::symlink(tmp.path(), area.join("out")).unwrap();
    assert_eq!(c.cmd("MKD /upload/out/escaped").await.0, 550);
    assert!(!tmp.path().join("escaped").exists());

    // Anonymous users do not see or reach the area.
    let mut anon = Control::login(ftp.addr, "anonymous", "x").await;
    assert_eq!(anon.cmd("CWD /upload").await.0, 550);
    assert_eq!(anon.cmd("MKD /upload/x").await.0, 550);
    ftp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_replies_use_the_configured_range_and_address() {
    let ftp = Ftp::start(&[("a.cfg", b"a")], |c| {
        c.passive_address = Some("127.0.0.2".parse().unwrap())
    })
    .await;
    let mut c = Control::login(ftp.addr, "anonymous", "x").await;
    let (code, t) = c.cmd("PASV").await;
    assert_eq!(code, 227, "{t}");
    let nums: Vec<u16> = t
        .split(['(', ')'])
        .nth(1)
        .unwrap()
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert_eq!(&nums[..4], &[127, 0, 0, 2], "{t}");
    let port = nums[4] * 256 + nums[5];
    assert!(PASSIVE.contains(port), "{port} outside {PASSIVE}");
    let data = c.epsv(ftp.addr.ip()).await;
    assert!(PASSIVE.contains(data.port()));
    ftp.stop().await;
}

#[tokio::test]
async fn an_ipv6_passive_address_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = provbox_storage::Store::start(provbox_storage::StoreOptions {
        root: dir.path().join("s"),
        state_dir: dir.path().join("st"),
        poll: false,
        poll_interval: std::time::Duration::from_secs(2),
        settle: std::time::Duration::from_millis(100),
        rescan_interval: std::time::Duration::from_secs(300),
    })
    .await
    .unwrap();
    let cfg = provbox_config::FtpConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ftps: false,
        passive_address: Some("::1".parse().unwrap()),
        ..Default::default()
    };
    let err = provbox_protocols::ftp::FtpServer::bind(
        &cfg,
        store,
        provbox_protocols::EventBus::default(),
        None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("ftp.passive_address"), "{err}");
}
