//! A stand-alone provbox DHCP server, for integration tests and benchmarks until
//! `provbox serve` wires the module in: `dhcpd CONFIG.toml`.
//!
//! It reads the `[dhcp]` and `[state]` sections, keeps leases in
//! `<state.dir>/leases.redb`, prints `listening <addr> server_ip <ip>` on stdout once
//! bound, and every ACK as `ack <mac> <ip>` when `PROVBOX_DHCPD_PRINT_ACKS=1` (tests use
//! it as the clients' record). It stops on SIGINT/SIGTERM after committing what is queued.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use provbox_config::{Config, TemplateVars};
use provbox_protocols::dhcp::DhcpServer;
use provbox_protocols::{EventBus, EventKind};
use provbox_storage::leases::LeaseDb;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: dhcpd CONFIG.toml");
        return ExitCode::from(64);
    };
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    let db_path = cfg.state.dir.join("leases.redb");
    let leases = match LeaseDb::open(&db_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let bus = EventBus::default();
    if std::env::var_os("PROVBOX_DHCPD_PRINT_ACKS").is_some() {
        let mut rx = bus.subscribe();
        tokio::spawn(async move {
            while let Ok(ev) = rx.recv().await {
                if let EventKind::DhcpAck(i) = &ev.kind
                    && let Some(ip) = i.ip
                {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "ack {} {ip}", i.mac);
                    let _ = out.flush();
                }
            }
        });
    }
    let server = match DhcpServer::bind(
        &cfg.dhcp,
        TemplateVars::from_config(&cfg),
        leases.clone(),
        bus,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "listening {} server_ip {}",
        server.local_addr(),
        server.server_ip()
    );
    let _ = std::io::stdout().flush();
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        stop.cancel();
    });
    if let Err(e) = server.run(token).await {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    eprintln!(
        "stopped; {} lease records in {}",
        leases.len(),
        db_path.display()
    );
    ExitCode::SUCCESS
}
