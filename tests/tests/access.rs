//! `[access] allow`: the file servers serve only the listed client networks. curl
//! fetches one file over HTTP, HTTPS, TFTP and FTP from an allowed loopback address
//! and from one outside the list (`--interface` picks the source address); the
//! outsider is turned away in each protocol's own way and every refusal is on the bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use provbox::Appliance;
use provbox_protocols::events::{EventKind, Proto};
use provbox_tests::{Scratch, require, run};

const ALLOWED: &str = "127.0.0.2";
const OUTSIDER: &str = "127.0.0.3";
const BODY: &[u8] = b"system/type=450HD\nvoip/line/0/auth_password=secret\n";

async fn curl(from: &str, url: String, extra: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--interface", from, "-o", "-"])
        .args(extra)
        .arg(url);
    tokio::task::spawn_blocking(move || run(&mut cmd, Duration::from_secs(30)))
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_clients_get_files_over_every_protocol() {
    require("curl");
    let s = Scratch::new();
    std::fs::write(s.store().join("00908f0000cc.cfg"), BODY).unwrap();
    let app = Appliance::builder()
        .store(s.store())
        .state(s.state())
        .loopback()
        .configure(|c| {
            c.dhcp.enabled = false;
            c.api.enabled = false;
            c.access.allow = vec![ALLOWED.parse().unwrap()];
        })
        .start()
        .await
        .unwrap();
    let mut events = app.bus().subscribe();
    let a = app.addrs().clone();
    let port = |x: Option<SocketAddr>| x.unwrap().port();
    let urls = [
        (
            Proto::Http,
            format!("http://127.0.0.1:{}/00908f0000cc.cfg", port(a.http)),
        ),
        (
            Proto::Https,
            format!("https://127.0.0.1:{}/00908f0000cc.cfg", port(a.https)),
        ),
        (
            Proto::Tftp,
            format!("tftp://127.0.0.1:{}/00908f0000cc.cfg", port(a.tftp)),
        ),
        (
            Proto::Ftp,
            format!("ftp://127.0.0.1:{}/00908f0000cc.cfg", port(a.ftp)),
        ),
    ];
    for (proto, url) in &urls {
        let ok = curl(ALLOWED, url.clone(), &["-k"]).await;
        assert!(
            ok.status.success(),
            "{proto:?} from {ALLOWED}: {}",
            text(&ok)
        );
        assert_eq!(ok.stdout, BODY, "{proto:?} from {ALLOWED}");

        let no = curl(OUTSIDER, url.clone(), &["-k", "--fail", "-v"]).await;
        assert!(
            !no.status.success(),
            "{proto:?} from {OUTSIDER} was served: {}",
            text(&no)
        );
        assert!(no.stdout.is_empty(), "{proto:?}: {}", text(&no));
        let why = String::from_utf8_lossy(&no.stderr);
        match proto {
            // (HTTPS speaks HTTP/2: `< HTTP/2 403`.)
            Proto::Http | Proto::Https => assert!(
                why.lines()
                    .any(|l| l.starts_with("< HTTP/") && l.contains(" 403")),
                "{proto:?}: {why}"
            ),
            // RFC 959's "service not available, closing control connection" as the
            // greeting (curl then reports a timeout, exit 28).
            Proto::Ftp => assert!(why.contains("< 421 "), "{proto:?}: {why}"),
            // curl names TFTP ERROR 2 "permission denied" (exit 69).
            Proto::Tftp => assert_eq!(no.status.code(), Some(69), "{proto:?}: {why}"),
        }
    }

    // One refusal per protocol on the bus, each naming the outsider and the reason;
    // the allowed client's four downloads finished.
    let (mut refused, mut finished) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused.len() < 4 || finished < 4 {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("refused {refused:?}, finished {finished}"))
            .unwrap();
        match &ev.kind {
            EventKind::TransferRefused {
                proto,
                peer,
                reason,
                ..
            } => {
                assert_eq!(peer.ip().to_string(), OUTSIDER, "{proto:?}: {reason}");
                assert!(reason.contains("[access] allow"), "{proto:?}: {reason}");
                refused.push(*proto);
            }
            EventKind::TransferFinished { .. } => finished += 1,
            _ => {}
        }
    }
    refused.sort_by_key(|p| *p as u8);
    assert_eq!(
        refused,
        vec![Proto::Tftp, Proto::Ftp, Proto::Http, Proto::Https],
        "one refusal per protocol"
    );
    app.shutdown().await;
}
