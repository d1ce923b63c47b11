//! Fixtures shared by the TFTP integration tests: an in-process server over a
//! temporary store, bounded waits for wire events, deterministic random files, a raw
//! TFTP socket for packet-level checks, and bounded runs of third-party clients.
// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use provbox_config::TftpConfig;
use provbox_protocols::events::{EventBus, EventKind, WireEvent};
use provbox_protocols::tftp::TftpServer;
use provbox_protocols::tftp::packet::Packet;
use provbox_storage::{Store, StoreOptions};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::net::UdpSocket;
use tokio::process::Command;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Longest wait for anything a test expects (a hang guard, not a speed check).
pub const WAIT: Duration = Duration::from_secs(120);

pub struct Fixture {
    pub addr: SocketAddr,
    pub bus: EventBus,
    pub root: PathBuf,
    pub dir: TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A server on 127.0.0.1 (ephemeral port) serving `files`; `tweak` adjusts the config.
pub async fn start(files: &[(&str, &[u8])], tweak: impl FnOnce(&mut TftpConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    for (name, data) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    let store = Store::start(StoreOptions {
        root: root.clone(),
        state_dir: dir.path().join("state"),
        poll: false,
        poll_interval: Duration::from_secs(2),
        settle: Duration::from_millis(50),
        rescan_interval: Duration::from_secs(300),
    })
    .await
    .unwrap();
    assert_eq!(
        store.index().len(),
        files.len(),
        "store did not index every test file"
    );
    let mut cfg = TftpConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..TftpConfig::default()
    };
    tweak(&mut cfg);
    let bus = EventBus::default();
    let server = TftpServer::bind(&cfg, store, bus.clone()).unwrap();
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { server.run(token).await.unwrap() });
    Fixture {
        addr,
        bus,
        root,
        dir,
        shutdown,
        task,
    }
}

impl Fixture {
    pub fn events(&self) -> broadcast::Receiver<Arc<WireEvent>> {
        self.bus.subscribe()
    }

    pub fn url(&self, path: &str) -> String {
        format!("tftp://{}/{path}", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn sha256_file(p: &Path) -> String {
    sha256(&std::fs::read(p).unwrap_or_default())
}

/// The next event matching `pred` (bounded by [`WAIT`]).
pub async fn wait_for(
    rx: &mut broadcast::Receiver<Arc<WireEvent>>,
    what: &str,
    mut pred: impl FnMut(&EventKind) -> bool,
) -> EventKind {
    let fut = async {
        loop {
            match rx.recv().await {
                Ok(ev) if pred(&ev.kind) => return ev.kind.clone(),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    panic!("event receiver lagged by {n} while waiting for {what}")
                }
                Err(broadcast::error::RecvError::Closed) => {
                    panic!("event bus closed while waiting for {what}")
                }
            }
        }
    };
    match tokio::time::timeout(WAIT, fut).await {
        Ok(k) => k,
        Err(_) => panic!("no {what} event within {WAIT:?}"),
    }
}

/// Every event already published (non-blocking).
pub fn drain(rx: &mut broadcast::Receiver<Arc<WireEvent>>) -> Vec<EventKind> {
    let mut v = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        v.push(ev.kind.clone());
    }
    v
}

/// Runs a client process to completion (bounded by [`WAIT`]; killed if it overruns).
pub async fn run(cmd: &mut Command) -> Output {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    match tokio::time::timeout(WAIT, cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("cannot run {cmd:?}: {e}"),
        Err(_) => panic!("{cmd:?} did not finish within {WAIT:?}"),
    }
}

pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A bare UDP socket speaking TFTP packets, for what no real client can be made to do.
pub struct Raw {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl Raw {
    pub async fn new(server: SocketAddr) -> Raw {
        Raw {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
        }
    }

    pub async fn send_to(&self, p: &Packet<'_>, to: SocketAddr) {
        self.sock.send_to(&p.encode(), to).await.unwrap();
    }

    /// The next datagram, or `None` after `within`.
    pub async fn recv(&self, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout(within, self.sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
            Ok(Err(e)) => panic!("recv: {e}"),
            Err(_) => None,
        }
    }

    /// The next datagram, which must come within [`WAIT`].
    pub async fn expect(&self) -> (Vec<u8>, SocketAddr) {
        self.recv(WAIT).await.expect("the server did not answer")
    }
}
