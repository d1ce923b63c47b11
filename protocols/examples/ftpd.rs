//! A stand-alone FTP/FTPS server over one directory, for benchmarks and manual tests:
//! the real `provbox_protocols::ftp` server with a store, an event bus and nothing
//! else.
//!
//! ```text
//! ftpd --root DIR [--state DIR] [--bind 127.0.0.1:2121] [--passive 20500-20599]
//!      [--ftps] [--user NAME:SHA256HEX[:upload]] [--upload-dir DIR] [--events]
//! ```
//! Prints `listening on ADDR` once ready; stops cleanly on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use provbox_config::{FtpConfig, FtpUser, PortRange};
use provbox_protocols::EventBus;
use provbox_protocols::ftp::{FtpServer, tls_config};
use provbox_storage::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libunftp=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut root = None;
    let mut state = None;
    let mut events = false;
    let mut cfg = FtpConfig {
        bind: "127.0.0.1:2121".parse()?,
        ftps: false,
        ..FtpConfig::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--root" => root = Some(PathBuf::from(val()?)),
            "--state" => state = Some(PathBuf::from(val()?)),
            "--bind" => cfg.bind = val()?.parse().context("--bind")?,
            "--passive" => {
                cfg.passive_ports = val()?.parse::<PortRange>().map_err(anyhow::Error::msg)?
            }
            "--ftps" => cfg.ftps = true,
            "--events" => events = true,
            "--upload-dir" => cfg.upload_dir = Some(PathBuf::from(val()?)),
            "--max-connections" => cfg.max_connections = val()?.parse()?,
            "--user" => {
                let v = val()?;
                let mut parts = v.split(':');
                let (Some(name), Some(hash)) = (parts.next(), parts.next()) else {
                    bail!("--user NAME:SHA256HEX[:upload]")
                };
                let upload = parts.next() == Some("upload");
                cfg.users.push(FtpUser {
                    name: name.into(),
                    password_hash: format!("sha256:{hash}"),
                    upload,
                });
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let root = root.context("--root DIR is required")?;
    let state = match state {
        Some(s) => s,
        None => std::env::temp_dir().join(format!("provbox-ftpd-{}", std::process::id())),
    };
    let store = Store::start(StoreOptions {
        root,
        state_dir: state.join("store"),
        poll: false,
        poll_interval: Duration::from_secs(2),
        settle: Duration::from_millis(300),
        rescan_interval: Duration::from_secs(300),
    })
    .await?;
    let tls = if cfg.ftps {
        let m = provbox_storage::tls::load_or_generate(
            None,
            None,
            &state,
            &["localhost".into(), "127.0.0.1".into()],
        )?;
        Some(tls_config(m.chain, m.key)?)
    } else {
        None
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
    let server = FtpServer::bind(&cfg, store, bus, tls).await?;
    println!("listening on {}", server.local_addr());
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
    server.run(shutdown).await?;
    Ok(())
}
