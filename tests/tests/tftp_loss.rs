//! TFTP under 5 % random packet loss each way: real clients in one network namespace
//! fetch from the server in another, over a veth pair whose client end drops packets
//! with nftables (this kernel has no netem). Every transfer must complete
//! hash-correct, and the server's events must show it actually recovered losses.
//!
//! The server runs inside its namespace as this very test binary, re-executed with
//! `ip netns exec` to run the ignored `netns_tftpd_helper` (no extra binary to build).
//! Needs root (namespaces); skipped, loudly, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tftp_common;

use std::process::Stdio;
use std::time::Duration;

use provbox_protocols::events::{EventKind, WireEvent};
use tftp_common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SERVER_IP: &str = "198.18.200.1";
const CLIENT_IP: &str = "198.18.200.2";
const PORT: u16 = 6969;

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn sh(args: &[&str]) {
    let o = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A server namespace and a client namespace joined by a veth pair; deleted on drop.
struct Netns {
    srv: String,
    cli: String,
}

impl Netns {
    fn new(tag: &str, loss_pct: u32) -> Netns {
        let pid = std::process::id();
        let ns = Netns {
            srv: format!("pbt-{tag}s-{pid}"),
            cli: format!("pbt-{tag}c-{pid}"),
        };
        let (sif, cif) = (format!("pts{pid}"), format!("ptc{pid}"));
        sh(&["ip", "netns", "add", &ns.srv]);
        sh(&["ip", "netns", "add", &ns.cli]);
        sh(&[
            "ip", "link", "add", &sif, "type", "veth", "peer", "name", &cif,
        ]);
        sh(&["ip", "link", "set", &sif, "netns", &ns.srv]);
        sh(&["ip", "link", "set", &cif, "netns", &ns.cli]);
        sh(&[
            "ip",
            "-n",
            &ns.srv,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            &sif,
        ]);
        sh(&[
            "ip",
            "-n",
            &ns.cli,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            &cif,
        ]);
        for (n, i) in [(&ns.srv, &sif), (&ns.cli, &cif)] {
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", n, "link", "set", i, "up"]);
        }
        // Loss in both directions on the client's end, before the wire and before the
        // client's stack (the approach of bench/peers/netns.sh).
        let rules = format!(
            "table netdev pbtloss {{
               chain in {{ type filter hook ingress device \"{cif}\" priority -500; numgen random mod 100 < {loss_pct} drop; }}
               chain out {{ type filter hook egress device \"{cif}\" priority -500; numgen random mod 100 < {loss_pct} drop; }}
             }}"
        );
        let mut nft = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.cli, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(nft.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
        drop(nft.stdin.take());
        assert!(nft.wait().unwrap().success(), "nft loss rules");
        ns
    }

    fn client(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.cli, prog]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so the pair.
        for n in [&self.srv, &self.cli] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", n])
                .status();
        }
    }
}

/// The server inside the server namespace, with its events on a channel.
struct Helper {
    child: Child,
    events: tokio::sync::mpsc::UnboundedReceiver<WireEvent>,
}

async fn start_helper(ns: &Netns, root: &std::path::Path, extra: &str) -> Helper {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.srv])
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            "netns_tftpd_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("PROVBOX_TFTPD_ROOT", root)
        .env("PROVBOX_TFTPD_BIND", format!("{SERVER_IP}:{PORT}"))
        .env("PROVBOX_TFTPD_EXTRA", extra)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(WAIT, async {
        while let Ok(Some(l)) = lines.next_line().await {
            // The harness may have printed "test netns_tftpd_helper ... " on the same line.
            if l.contains("TFTPD listening") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(listening, Ok(true), "the helper server did not start");
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some((_, json)) = l.split_once("TFTPD event ")
                && let Ok(ev) = serde_json::from_str::<WireEvent>(json)
            {
                let _ = tx.send(ev);
            }
        }
    });
    Helper { child, events }
}

impl Helper {
    /// The next finished or aborted transfer: (finished, retransmits or reason).
    async fn next_end(&mut self) -> EventKind {
        let fut = async {
            while let Some(ev) = self.events.recv().await {
                if matches!(
                    ev.kind,
                    EventKind::TransferFinished { .. } | EventKind::TransferAborted { .. }
                ) {
                    return ev.kind;
                }
            }
            panic!("the helper server's output ended");
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("no transfer end event")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_completes_hash_correct() {
    if !is_root() {
        eprintln!(
            "SKIPPED five_percent_loss_completes_hash_correct: needs root for network namespaces"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let img = random_bytes(2 << 20, 20);
    let cfg = b"system/type=450HD\n".repeat(60);
    std::fs::write(root.join("450HD.img"), &img).unwrap();
    std::fs::write(root.join("00908f123456.cfg"), &cfg).unwrap();
    let ns = Netns::new("l", 5);
    let mut server = start_helper(&ns, &root, "").await;
    let out = dir.path().join("out");
    let url = |f: &str| format!("tftp://{SERVER_IP}:{PORT}/{f}");
    let port = PORT.to_string();

    let runs: Vec<(&str, Command, &[u8])> = vec![
        (
            "atftp b1468 lock-step",
            {
                let mut c = ns.client("atftp");
                c.args(["--get", "-r", "450HD.img", "-l"]).arg(&out).args([
                    "--option",
                    "blksize 1468",
                    SERVER_IP,
                    &port,
                ]);
                c
            },
            &img,
        ),
        (
            "atftp b1468 windowsize 8",
            {
                let mut c = ns.client("atftp");
                c.args(["--get", "-r", "450HD.img", "-l"]).arg(&out).args([
                    "--option",
                    "blksize 1468",
                    "--option",
                    "windowsize 8",
                    SERVER_IP,
                    &port,
                ]);
                c
            },
            &img,
        ),
        (
            "tftp-hpa b512",
            {
                let mut c = ns.client("tftp");
                c.args(["-m", "binary", SERVER_IP, &port, "-c", "get", "450HD.img"])
                    .arg(&out);
                c
            },
            &img,
        ),
        (
            "curl b1468",
            {
                let mut c = ns.client("curl");
                c.args(["-sS", "--max-time", "110", "--tftp-blksize", "1468", "-o"])
                    .arg(&out)
                    .arg(url("450HD.img"));
                c
            },
            &img,
        ),
        (
            "curl cfg",
            {
                let mut c = ns.client("curl");
                c.args(["-sS", "--max-time", "110", "-o"])
                    .arg(&out)
                    .arg(url("00908f123456.cfg"));
                c
            },
            &cfg,
        ),
    ];
    let mut recovered = 0;
    for (name, mut cmd, want) in runs {
        // A client may itself give up when its own request or final ACK is lost
        // repeatedly; retry the run a bounded number of times, like a phone would.
        let mut ok = false;
        for attempt in 1..=3 {
            let _ = std::fs::remove_file(&out);
            let o = run(&mut cmd).await;
            let end = server.next_end().await;
            if let EventKind::TransferFinished { retransmits, .. } = end {
                recovered += retransmits;
            }
            if o.status.success() && sha256_file(&out) == sha256(want) {
                ok = true;
                break;
            }
            eprintln!("{name}: attempt {attempt} failed: {}", show(&o));
        }
        assert!(
            ok,
            "{name}: no hash-correct download in 3 attempts at 5 % loss"
        );
    }
    assert!(
        recovered > 0,
        "no retransmission in any transfer: was there any loss?"
    );
    let _ = server.child.start_kill();
    let _ = server.child.wait().await;
}

/// Not a test: the server the namespace tests run inside their server namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for the netns tests, started by them"]
async fn netns_tftpd_helper() {
    let Ok(root) = std::env::var("PROVBOX_TFTPD_ROOT") else {
        panic!("run by the netns tests only (PROVBOX_TFTPD_ROOT unset)");
    };
    let bind = std::env::var("PROVBOX_TFTPD_BIND").unwrap();
    let extra = std::env::var("PROVBOX_TFTPD_EXTRA").unwrap_or_default();
    let state = tempfile::tempdir().unwrap();
    let store = provbox_storage::Store::start(provbox_storage::StoreOptions {
        root: root.into(),
        state_dir: state.path().to_path_buf(),
        poll: false,
        poll_interval: Duration::from_secs(2),
        settle: Duration::from_millis(50),
        rescan_interval: Duration::from_secs(300),
    })
    .await
    .unwrap();
    let cfg = provbox_config::TftpConfig {
        bind: bind.parse().unwrap(),
        single_port: extra.contains("single_port"),
        ..Default::default()
    };
    let bus = provbox_protocols::EventBus::default();
    let mut rx = bus.subscribe();
    tokio::spawn(async move {
        while let Ok(ev) = rx.recv().await {
            println!("TFTPD event {}", serde_json::to_string(&*ev).unwrap());
        }
    });
    let server = provbox_protocols::tftp::TftpServer::bind(&cfg, store, bus).unwrap();
    println!("TFTPD listening {}", server.local_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    // Bounded life even if the parent test dies without killing us.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(600)).await;
        stop.cancel();
    });
    server.run(shutdown).await.unwrap();
}
