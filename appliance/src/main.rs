//! The `provbox` command line: parses arguments, sets up logging, and hands over to
//! the library. Exit status 64 (EX_USAGE) for a bad config, before any port is bound.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use provbox::logging::{self, LogFormat};
use provbox_config::Config;

// mimalloc instead of glibc malloc: per-request allocations (events, journal lines,
// TLS records) made malloc/free about a sixth of a small HTTPS request's CPU, and
// glibc's arenas grow under many threads. Measured with bench/https-vs-nginx.sh.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (v2's `mi_option_e`; the crate names no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for 2 s before giving it back to the OS (mimalloc's default is
/// 10 ms). A fleet's per-connection buffers are freed and allocated again all the time,
/// and each purge meant the kernel zeroing fresh pages on the next use: in a 500-phone
/// HTTP fleet that was 11 % of the simulator's CPU, and 2 s took a fifth off it.
fn tune_allocator() {
    // SAFETY: sets one integer option by value; called first in `main`, before any
    // other thread exists, so nothing reads the option meanwhile.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 2000);
    }
}

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
    /// Validate the config and the store; explain what phones would be given.
    ///
    /// A dry run: the config as `serve` would load it (the file plus PROVBOX_* overrides)
    /// and a read-only look at the store. With --model/--mac it explains that phone's
    /// answer; without, every [[dhcp.policy]] and the [dhcp] defaults. After each answer's
    /// options it looks up the files they name (option 160 in all four grammars, 66/67) in
    /// the store, as provbox's servers would (`450HD.img` is the newest `450HD_<version>.img`
    /// beside it; MAC-named files match in any spelling). Files on another host, or named
    /// by a <MAC>/<MODEL> this run cannot fill, are listed as not checked.
    ///
    /// Exit status: 0 all good (warnings may be printed); 64 the config is invalid;
    /// 65 a file on this appliance that an answer names is MISSING from the store (or its
    /// path would be refused), so a CI job running `provbox check` fails before a phone does.
    Check(provbox::check::CheckArgs),
    /// Run the appliance on loopback with a simulated fleet of phones: the whole product
    /// in one command, no root needed.
    Demo(provbox::demo::DemoArgs),
    /// Simulated AudioCodes 400HD phones against any provisioning server.
    Sim(Box<SimCmd>),
    /// List a running instance's phones (table, or --json).
    Devices {
        #[command(flatten)]
        api: ApiArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live terminal view of a running instance's phones, with a progress bar each.
    Watch {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Write a JUnit report (one testcase per phone) from a running instance, for CI.
    Report {
        #[command(flatten)]
        api: ApiArgs,
        /// Where to write the JUnit XML.
        #[arg(long)]
        junit: PathBuf,
    },
    /// Write the [dhcp] policies as config for ISC dhcpd, Kea or dnsmasq.
    ExportDhcp(provbox::export::ExportDhcpArgs),
    /// Move leases from dnsmasq or Kea into provbox's database (with serve stopped),
    /// so phones keep their addresses across the switch.
    ImportLeases(provbox::import::ImportLeasesArgs),
    /// Install as a hardened systemd service (needs root).
    InstallSystemd(provbox::install::InstallSystemdArgs),
    /// Exit 0 if the running appliance answers (the container HEALTHCHECK).
    Healthcheck(provbox::healthcheck::HealthcheckArgs),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct SimCmd {
    #[command(subcommand)]
    sub: Option<SimSub>,
    #[command(flatten)]
    args: provbox::sim::SimArgs,
}

#[derive(Debug, Subcommand)]
enum SimSub {
    /// Write a synthetic firmware image (a PROVBOX-SIM test format, not a vendor format).
    MakeImage(provbox::sim::MakeImageArgs),
}

/// How to reach a running instance's API.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The API's base URL.
    #[arg(long, env = "PROVBOX_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Bearer token, when the API requires one.
    #[arg(long, env = "PROVBOX_API_TOKEN")]
    token: Option<String>,
}

/// EX_USAGE from sysexits.h: the config is wrong.
const EX_CONFIG: u8 = 64;

fn load_config(path: Option<&std::path::Path>) -> Result<Config, provbox_config::ConfigError> {
    // The file (or the defaults) with PROVBOX_<SECTION>_<FIELD> overrides applied.
    Config::load_with_env(path)
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // The demo and the simulator draw progress bars: keep the appliance's info lines out
    // of them unless a level was asked for.
    let level = match (&cli.command, cli.log_level.as_str()) {
        (Command::Demo(_) | Command::Sim(_), "info") => "warn",
        (_, l) => l,
    };
    logging::init(cli.log_format, level);
    raise_fd_limit();
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
            Command::Demo(args) => provbox::demo::run(args).await,
            Command::Sim(cmd) => match *cmd {
                SimCmd {
                    sub: Some(SimSub::MakeImage(args)),
                    ..
                } => provbox::sim::make_image_cli(&args).map(|_| ExitCode::SUCCESS),
                SimCmd { sub: None, args } => {
                    let report = provbox::sim::run(args).await?;
                    Ok(if report.all_provisioned() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
            },
            Command::Devices { api, json } => {
                provbox::client::devices(&api.api, api.token.as_deref(), json)
                    .await
                    .map(|_| ExitCode::SUCCESS)
            }
            Command::Watch { api } => provbox::client::watch(&api.api, api.token.as_deref())
                .await
                .map(|_| ExitCode::SUCCESS),
            Command::Report { api, junit } => {
                let summary =
                    provbox::client::report_junit(&api.api, api.token.as_deref(), &junit).await?;
                eprintln!(
                    "{}: {} phones, {} not provisioned",
                    junit.display(),
                    summary.phones,
                    summary.failures
                );
                // A CI pipeline fails when a phone did not make it.
                Ok(if summary.failures == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Command::ExportDhcp(args) => provbox::export::run(args).await,
            Command::ImportLeases(args) => provbox::import::run(args).await,
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

/// Raises the soft open-file limit to the hard one, as Go's runtime does at start:
/// each phone's connection and each mapped blob (kept open for `sendfile`) holds a
/// descriptor, and the usual soft limit of 1024 is below a 500-phone fleet's needs.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit; many phones at once may see refused connections");
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
