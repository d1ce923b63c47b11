//! Shared fixture for the FTP integration tests: a store in a temporary directory, the
//! real FTP server on an ephemeral loopback port, the event bus, and small helpers to
//! run curl and lftp and to speak raw FTP on the control connection.

#![allow(dead_code)] // each test file uses a different part of the fixture

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use provbox_config::{FtpConfig, PortRange};
use provbox_protocols::ftp::{FtpError, FtpServer, tls_config};
use provbox_protocols::{EventBus, EventKind, WireEvent};
use provbox_storage::{Store, StoreOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Passive ports for every FTP test; servers running in parallel share the range
/// (the server skips ports that are in use).
pub const PASSIVE: PortRange = PortRange {
    first: 40000,
    last: 40999,
};

/// Upper bound for any single wait in these tests (not a speed assertion).
pub const BOUND: Duration = Duration::from_secs(30);

pub struct Ftp {
    pub addr: SocketAddr,
    pub root: PathBuf,
    pub state: PathBuf,
    pub bus: EventBus,
    pub store: Store,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub cert_pem: Option<PathBuf>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), FtpError>>,
    _dir: tempfile::TempDir,
}

/// Deterministic pseudo-random content (no dependency needed for test data).
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

pub fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Ftp {
    /// Starts a store holding `files` and an FTP server over it; `tweak` adjusts the
    /// config (bind and passive ports are preset to loopback).
    pub async fn start(files: &[(&str, &[u8])], tweak: impl FnOnce(&mut FtpConfig)) -> Ftp {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let state = dir.path().join("state");
        for (name, data) in files {
            let p = root.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
        let store = Store::start(StoreOptions {
            root: root.clone(),
            state_dir: state.join("store"),
            poll: false,
            poll_interval: Duration::from_secs(2),
            settle: Duration::from_millis(100),
            rescan_interval: Duration::from_secs(300),
        })
        .await
        .unwrap();
        let mut cfg = FtpConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            passive_ports: PASSIVE,
            ftps: false,
            ..FtpConfig::default()
        };
        tweak(&mut cfg);
        let (tls, cert_pem) = if cfg.ftps {
            let m = provbox_storage::tls::load_or_generate(
                None,
                None,
                &state,
                &["localhost".into(), "127.0.0.1".into()],
            )
            .unwrap();
            let path = m.cert_path.clone();
            (Some(tls_config(m.chain, m.key).unwrap()), Some(path))
        } else {
            (None, None)
        };
        let bus = EventBus::default();
        let server = FtpServer::bind(&cfg, store.clone(), bus.clone(), tls.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Ftp {
            addr,
            root,
            state,
            bus,
            store,
            tls,
            cert_pem,
            shutdown,
            task,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ftp://{}{}", self.addr, path)
    }

    /// Cancels the server and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(BOUND, self.task)
            .await
            .expect("run() returned after shutdown");
        r.unwrap().unwrap();
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

pub async fn run(cmd: &str, args: &[&str]) -> Output {
    let fut = tokio::process::Command::new(cmd)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(BOUND * 2, fut)
        .await
        .expect("client finished in time")
        .expect("client runs")
}

/// curl with a time limit; returns its output.
pub async fn curl(args: &[&str]) -> Output {
    let mut all = vec!["-sS", "--max-time", "30"];
    all.extend_from_slice(args);
    run("curl", &all).await
}

/// lftp against the fixture with `script` (commands separated by `;`), failing fast.
pub async fn lftp(ftp: &Ftp, script: &str) -> Output {
    let full = format!(
        "set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 10; set net:reconnect-interval-base 1; set xfer:clobber on; {script}; bye"
    );
    let port = ftp.addr.port().to_string();
    run("lftp", &["-p", &port, "-e", &full, "127.0.0.1"]).await
}

pub fn ok(out: &Output) -> bool {
    out.status.success()
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits (bounded) for the first event matching `pred`.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<Arc<WireEvent>>,
    mut pred: impl FnMut(&EventKind) -> bool,
) -> Option<EventKind> {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(ev)) if pred(&ev.kind) => return Some(ev.kind.clone()),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
        }
    }
}

/// A raw FTP control connection, for what the clients do not expose directly.
pub struct Control {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Control {
    pub async fn connect(addr: SocketAddr) -> Control {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        let mut c = Control {
            r: BufReader::new(r),
            w,
        };
        let (code, _) = c.reply().await;
        assert_eq!(code, 220);
        c
    }

    pub async fn login(addr: SocketAddr, user: &str, pass: &str) -> Control {
        let mut c = Control::connect(addr).await;
        assert_eq!(c.cmd(&format!("USER {user}")).await.0, 331);
        let (code, text) = c.cmd(&format!("PASS {pass}")).await;
        assert_eq!(code, 230, "{text}");
        c
    }

    /// Reads one (possibly multi-line) reply; code 0 when the server closed.
    pub async fn reply(&mut self) -> (u32, String) {
        let mut all = String::new();
        let mut first_code: Option<String> = None;
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(BOUND, self.r.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap_or(0);
            if n == 0 {
                return (0, all);
            }
            all.push_str(&line);
            let code = line.get(..3).unwrap_or("").to_string();
            match &first_code {
                None if line.as_bytes().get(3) == Some(&b'-') => first_code = Some(code),
                None => return (code.parse().unwrap_or(0), all),
                Some(c) if *c == code && line.as_bytes().get(3) == Some(&b' ') => {
                    return (code.parse().unwrap_or(0), all);
                }
                Some(_) => {}
            }
        }
    }

    pub async fn send(&mut self, line: &str) {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> (u32, String) {
        self.send(line).await;
        self.reply().await
    }

    /// EPSV, and the data address it names.
    pub async fn epsv(&mut self, host: std::net::IpAddr) -> SocketAddr {
        let (code, text) = self.cmd("EPSV").await;
        assert_eq!(code, 229, "{text}");
        let port: u16 = text
            .split("|||")
            .nth(1)
            .and_then(|s| s.split('|').next())
            .and_then(|p| p.parse().ok())
            .expect("EPSV port");
        SocketAddr::new(host, port)
    }
}

pub fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}
