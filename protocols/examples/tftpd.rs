//! A standalone provbox TFTP server over one directory, for benchmarks and for tests
//! that run the server inside a network namespace (`ip netns exec NS tftpd ...`).
//!
//! ```text
//! tftpd --root DIR [--bind 0.0.0.0:6969] [--single-port] [--port-range 30100-30199]
//!       [--max-blksize N] [--max-windowsize N] [--timeout 1s] [--min-timeout 10ms] [--retries N]
//!       [--upload-dir DIR] [--events]
//! ```
//!
//! Prints `listening <addr>` once bound; with `--events`, every wire event as one
//! JSON line on stdout. Stops on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use provbox_config::TftpConfig;
use provbox_protocols::EventBus;
use provbox_protocols::tftp::TftpServer;
use provbox_storage::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;

fn usage(msg: &str) -> ExitCode {
    eprintln!(
        "tftpd: {msg}\nusage: tftpd --root DIR [--bind ADDR] [--single-port] [--port-range A-B] [--max-blksize N] [--max-windowsize N] [--timeout DUR] [--min-timeout DUR] [--retries N] [--upload-dir DIR] [--events]"
    );
    ExitCode::from(64)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut cfg = TftpConfig {
        bind: "0.0.0.0:6969".parse().unwrap_or(TftpConfig::default().bind),
        ..TftpConfig::default()
    };
    let mut root: Option<PathBuf> = None;
    let mut events = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let res: Result<(), String> = (|| {
            match a.as_str() {
                "--root" => root = Some(PathBuf::from(val("--root")?)),
                "--bind" => {
                    cfg.bind = val("--bind")?.parse().map_err(|e| format!("--bind: {e}"))?
                }
                "--single-port" => cfg.single_port = true,
                "--port-range" => {
                    cfg.port_range = Some(
                        val("--port-range")?
                            .parse()
                            .map_err(|e| format!("--port-range: {e}"))?,
                    )
                }
                "--max-blksize" => {
                    cfg.max_blksize = val("--max-blksize")?
                        .parse()
                        .map_err(|e| format!("--max-blksize: {e}"))?
                }
                "--max-windowsize" => {
                    cfg.max_windowsize = val("--max-windowsize")?
                        .parse()
                        .map_err(|e| format!("--max-windowsize: {e}"))?
                }
                "--timeout" => {
                    cfg.timeout = val("--timeout")?
                        .parse()
                        .map_err(|e| format!("--timeout: {e}"))?
                }
                "--min-timeout" => {
                    cfg.min_timeout = val("--min-timeout")?
                        .parse()
                        .map_err(|e| format!("--min-timeout: {e}"))?
                }
                "--retries" => {
                    cfg.retries = val("--retries")?
                        .parse()
                        .map_err(|e| format!("--retries: {e}"))?
                }
                "--upload-dir" => cfg.upload_dir = Some(PathBuf::from(val("--upload-dir")?)),
                "--events" => events = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
            Ok(())
        })();
        if let Err(e) = res {
            return usage(&e);
        }
    }
    let Some(root) = root else {
        return usage("--root is required");
    };
    let state = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return usage(&format!("cannot create a state directory: {e}")),
    };
    let store = match Store::start(StoreOptions {
        root: root.clone(),
        state_dir: state.path().to_path_buf(),
        poll: false,
        poll_interval: std::time::Duration::from_secs(2),
        settle: std::time::Duration::from_millis(100),
        rescan_interval: std::time::Duration::from_secs(300),
    })
    .await
    {
        Ok(s) => s,
        Err(e) => return usage(&format!("store {}: {e}", root.display())),
    };
    let bus = EventBus::default();
    if events {
        let mut rx = bus.subscribe();
        tokio::spawn(async move {
            while let Ok(ev) = rx.recv().await {
                if let Ok(line) = serde_json::to_string(&*ev) {
                    println!("{line}");
                }
            }
        });
    }
    let server = match TftpServer::bind(&cfg, store, bus) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tftpd: {e}");
            return ExitCode::from(1);
        }
    };
    println!("listening {}", server.local_addr());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    match server.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tftpd: {e}");
            ExitCode::from(1)
        }
    }
}
