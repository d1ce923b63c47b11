//! The `provbox` command line: parses arguments, sets up logging, and hands over to
//! the library. Exit status 64 (EX_USAGE) for a bad config, before any port is bound.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use provbox::logging::{self, LogFormat};
use provbox_config::Config;

/// provbox: one binary that provisions IP phones over DHCP, TFTP, FTP, HTTP and HTTPS
/// from one watched directory, and shows every phone's journey live.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PROVBOX_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log level (overridden by RUST_LOG).
    #[arg(long, global = true, default_value = "info", env = "PROVBOX_LOG_LEVEL")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance: DHCP, TFTP, FTP, HTTP, HTTPS and the dashboard.
    ///
    /// Without --config: the store is ./store, state in ./state, every protocol on its
    /// standard port (DHCP only once a pool is configured).
    Serve {
        /// The config file (see provbox.example.toml).
        #[arg(short, long, env = "PROVBOX_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the config and the store; explain what a phone would be given.
    Check(provbox::check::CheckArgs),
    /// Write the [dhcp] policies as config for ISC dhcpd, Kea or dnsmasq.
    ExportDhcp(provbox::export::ExportDhcpArgs),
    /// Install as a hardened systemd service (needs root).
    InstallSystemd(provbox::install::InstallSystemdArgs),
    /// Exit 0 if the running appliance answers (the container HEALTHCHECK).
    Healthcheck(provbox::healthcheck::HealthcheckArgs),
}

/// EX_USAGE from sysexits.h: the config is wrong.
const EX_CONFIG: u8 = 64;

fn load_config(path: Option<&std::path::Path>) -> Result<Config, provbox_config::ConfigError> {
    // The file (or the defaults) with PROVBOX_<SECTION>_<FIELD> overrides applied.
    Config::load_with_env(path)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, &cli.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("provbox")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("provbox: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve { config } => {
                let config = match load_config(config.as_deref()) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("provbox: {e}");
                        return Ok(ExitCode::from(EX_CONFIG));
                    }
                };
                serve(config).await.map(|_| ExitCode::SUCCESS)
            }
            Command::Check(args) => provbox::check::run(args).await,
            Command::ExportDhcp(args) => provbox::export::run(args).await,
            Command::InstallSystemd(args) => provbox::install::run(args).await,
            Command::Healthcheck(args) => provbox::healthcheck::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("provbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = provbox::Appliance::builder().config(config).start().await?;
    wait_for_signal()
        .await
        .context("cannot listen for SIGINT/SIGTERM")?;
    tracing::info!("shutting down; in-flight downloads get a grace period");
    app.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
