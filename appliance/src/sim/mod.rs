//! The phone simulator: a fleet of simulated AudioCodes 400HD phones that provision
//! themselves over the real wire (DHCP, TFTP, FTP, HTTP, HTTPS) against provbox or any
//! other provisioning server, following `phone-behaviour.md` §10.
//!
//! Layout:
//! - [`phone`]: one phone's state machine, its settings ([`PhoneSpec`]) and faults;
//! - [`dhcp_client`]: relay-mode (loopback, no root) and broadcast-mode DHCP;
//! - [`fetch`] with [`http_client`], [`ftp_client`] and [`tftp`]: file transfers bound
//!   to the phone's leased address;
//! - [`url`]: option 160 / 66 / 67 resolution; [`config_file`]: `.cfg` parsing;
//! - [`image`]: the synthetic image format ("PROVBOX-SIM, NOT A VENDOR FORMAT") and
//!   `make-image`;
//! - [`report`]: live progress and the end-of-run report.
//!
//! Entry points: [`run`] for `provbox sim` ([`SimArgs`]), [`make_image`] for
//! `provbox sim make-image` ([`MakeImageArgs`]), and [`Fleet`] / [`run_fleet`] to run
//! phones in-process (the demo, end-to-end tests).
//!
//! ```no_run
//! # async fn demo() -> Result<(), provbox::sim::SimError> {
//! use provbox::sim::{Fleet, Family, SimTarget};
//! let target = SimTarget::relay("127.0.0.1:6767".parse().unwrap(), "127.77.0.1".parse().unwrap());
//! let report = Fleet::generate(10, &["450HD", "445HD"], Family::Uc, "00:90:8f:10:00:01".parse().unwrap())
//!     .configure(|p| p.timings.burn = std::time::Duration::from_millis(200))
//!     .run(target, None)
//!     .await?;
//! assert!(report.all_provisioned());
//! # Ok(()) }
//! ```

pub mod config_file;
pub mod dhcp_client;
pub mod fetch;
pub mod ftp_client;
pub mod http_client;
pub mod image;
pub mod phone;
pub mod report;
pub mod tftp;
pub mod url;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use provbox_config::MacAddr;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use thiserror::Error;

pub use dhcp_client::{DhcpMode, Lease, Retransmit};
pub use fetch::{HeaderCheck, TftpSettings, TlsSetupError};
pub use image::{FirmwareHeader, ImageSpec, MakeImageArgs, make_image};
pub use phone::{DhcpTarget, Family, Faults, MacCase, PhoneSpec, Timings};
pub use report::{
    NoProgress, Phase, PhoneReport, PhoneUpdate, ProgressSink, SimReport, TerminalProgress,
};

/// Errors that stop a run before any phone starts.
#[derive(Debug, Error)]
pub enum SimError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("{0}")]
    Args(String),
}

/// Where the fleet provisions from, and the transport settings all phones share.
#[derive(Debug, Clone)]
pub struct SimTarget {
    pub dhcp: DhcpTarget,
    /// Port for TFTP URLs without one (option 66 holds only a host).
    pub tftp_port: u16,
    /// Verify HTTPS servers against this PEM file; `None` accepts any certificate.
    pub ca: Option<PathBuf>,
    pub tftp: TftpSettings,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub dhcp_retransmit: Retransmit,
    /// Each phone ends as failed if it has not finished within this time.
    pub time_limit: Duration,
}

impl SimTarget {
    fn with_dhcp(dhcp: DhcpTarget) -> Self {
        SimTarget {
            dhcp,
            tftp_port: 69,
            ca: None,
            tftp: TftpSettings::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            dhcp_retransmit: Retransmit {
                first: Duration::from_secs(1),
                max: Duration::from_secs(8),
                attempts: 6,
            },
            time_limit: Duration::from_secs(600),
        }
    }

    /// Loopback relay mode: the DHCP server at `dhcp`, phones relaying from `giaddr`.
    pub fn relay(dhcp: SocketAddr, giaddr: Ipv4Addr) -> Self {
        Self::with_dhcp(DhcpTarget::Relay {
            server: dhcp,
            giaddr,
        })
    }

    /// Broadcast mode on a real segment (root), optionally adding leases to `interface`.
    pub fn broadcast(interface: Option<String>, assign: bool) -> Self {
        Self::with_dhcp(DhcpTarget::Broadcast {
            interface,
            server_port: 67,
            client_port: 68,
            assign,
        })
    }

    /// No DHCP: phone `i` uses `first_ip + i` and `url` as its option 160.
    pub fn static_url(url: &str, first_ip: Ipv4Addr) -> Self {
        Self::with_dhcp(DhcpTarget::Static {
            first_ip,
            url: url.to_string(),
        })
    }
}

/// A set of phones to run in-process.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub specs: Vec<PhoneSpec>,
}

impl Fleet {
    pub fn new() -> Self {
        Fleet::default()
    }

    /// `n` phones with consecutive MACs from `first_mac`, models taken round-robin.
    pub fn generate(n: usize, models: &[&str], family: Family, first_mac: MacAddr) -> Self {
        let models: Vec<&str> = if models.is_empty() {
            vec!["450HD"]
        } else {
            models.to_vec()
        };
        let specs = (0..n)
            .map(|i| PhoneSpec::new(nth_mac(first_mac, i), models[i % models.len()], family))
            .collect();
        Fleet { specs }
    }

    /// Adds one phone.
    pub fn phone(mut self, spec: PhoneSpec) -> Self {
        self.specs.push(spec);
        self
    }

    /// Changes every phone.
    pub fn configure(mut self, mut f: impl FnMut(&mut PhoneSpec)) -> Self {
        self.specs.iter_mut().for_each(&mut f);
        self
    }

    /// Changes the phone with this MAC.
    pub fn configure_mac(mut self, mac: MacAddr, f: impl FnOnce(&mut PhoneSpec)) -> Self {
        if let Some(p) = self.specs.iter_mut().find(|p| p.mac == mac) {
            f(p);
        }
        self
    }

    pub async fn run(
        self,
        target: SimTarget,
        progress: Option<Arc<dyn ProgressSink>>,
    ) -> Result<SimReport, SimError> {
        run_fleet(self.specs, target, progress).await
    }
}

/// The `i`-th MAC after `first` (wrapping within the last three bytes, so the OUI
/// stays).
pub fn nth_mac(first: MacAddr, i: usize) -> MacAddr {
    let m = first.0;
    let low = (u32::from(m[3]) << 16 | u32::from(m[4]) << 8 | u32::from(m[5]))
        .wrapping_add(i as u32)
        & 0x00ff_ffff;
    MacAddr([
        m[0],
        m[1],
        m[2],
        (low >> 16) as u8,
        (low >> 8) as u8,
        low as u8,
    ])
}

/// Runs `specs` against `target` until every phone has finished; reports in spec
/// order.
pub async fn run_fleet(
    specs: Vec<PhoneSpec>,
    target: SimTarget,
    progress: Option<Arc<dyn ProgressSink>>,
) -> Result<SimReport, SimError> {
    let tls = fetch::tls_config(target.ca.as_deref())?;
    let mut transport = fetch::Transport::new(tls);
    transport.tftp_port = target.tftp_port;
    transport.tftp = target.tftp.clone();
    transport.connect_timeout = target.connect_timeout;
    transport.read_timeout = target.read_timeout;
    let progress: Arc<dyn ProgressSink> = progress.unwrap_or_else(|| Arc::new(NoProgress));
    let shared = Arc::new(phone::Shared {
        transport,
        dhcp: target.dhcp.clone(),
        retransmit: target.dhcp_retransmit.clone(),
        progress: progress.clone(),
    });
    let started = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let n = specs.len();
    for (i, spec) in specs.into_iter().enumerate() {
        let shared = shared.clone();
        let limit = target.time_limit + spec.timings.power_on_delay;
        set.spawn(async move { (i, phone::run(i, spec, shared, limit).await) });
    }
    let mut reports: Vec<Option<PhoneReport>> = vec![None; n];
    while let Some(r) = set.join_next().await {
        match r {
            Ok((i, rep)) => reports[i] = Some(rep),
            Err(e) => tracing::error!("a simulated phone task ended abnormally: {e}"),
        }
    }
    progress.finish();
    let phones: Vec<PhoneReport> = reports.into_iter().flatten().collect();
    Ok(SimReport::new(phones, started.elapsed()))
}

fn dur(s: &str) -> Result<Duration, String> {
    s.parse::<provbox_config::Duration>().map(|d| d.get())
}

/// Which phones get a fault.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultSelect {
    /// Each phone with this probability (0..=100 %).
    Percent(f64),
    /// Exactly this many phones, chosen at random (by `--seed`).
    Count(usize),
    All,
    Macs(Vec<MacAddr>),
}

/// A `--fault KIND=WHO` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultArg {
    pub kind: FaultKind,
    pub select: FaultSelect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    PowerLoss,
    Corrupt,
    WrongModel,
    Slow,
}

impl std::str::FromStr for FaultArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let help = "use KIND=WHO with KIND power-loss, corrupt, wrong-model or slow and WHO 5%, 3, all, or MACs separated by commas";
        let (k, who) = s
            .split_once('=')
            .ok_or_else(|| format!("--fault `{s}`: {help}"))?;
        let kind = match k.trim() {
            "power-loss" => FaultKind::PowerLoss,
            "corrupt" => FaultKind::Corrupt,
            "wrong-model" => FaultKind::WrongModel,
            "slow" => FaultKind::Slow,
            other => return Err(format!("--fault `{s}`: unknown fault `{other}`; {help}")),
        };
        let who = who.trim();
        let select = if who == "all" {
            FaultSelect::All
        } else if let Some(p) = who.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("--fault `{s}`: `{who}` is not a percentage"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("--fault `{s}`: percentage must be 0 to 100"));
            }
            FaultSelect::Percent(v)
        } else if let Ok(n) = who.parse::<usize>() {
            FaultSelect::Count(n)
        } else {
            let macs = who
                .split(',')
                .map(|m| m.trim().parse::<MacAddr>())
                .collect::<Result<Vec<_>, _>>();
            FaultSelect::Macs(macs.map_err(|e| format!("--fault `{s}`: {e}; {help}"))?)
        };
        Ok(FaultArg { kind, select })
    }
}

/// Applies `faults` to `specs` (deterministic for a given seed).
pub fn apply_faults(specs: &mut [PhoneSpec], faults: &[FaultArg], seed: u64, slow_rate: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for f in faults {
        let chosen: Vec<usize> = match &f.select {
            FaultSelect::All => (0..specs.len()).collect(),
            FaultSelect::Percent(p) => (0..specs.len())
                .filter(|_| rng.random::<f64>() * 100.0 < *p)
                .collect(),
            FaultSelect::Count(n) => {
                let mut idx: Vec<usize> = (0..specs.len()).collect();
                idx.shuffle(&mut rng);
                idx.truncate(*n);
                idx
            }
            FaultSelect::Macs(macs) => (0..specs.len())
                .filter(|i| macs.contains(&specs[*i].mac))
                .collect(),
        };
        for i in chosen {
            let fl = &mut specs[i].faults;
            match f.kind {
                FaultKind::PowerLoss => fl.power_loss = true,
                FaultKind::Corrupt => fl.corrupt = true,
                FaultKind::WrongModel => fl.wrong_model = true,
                FaultKind::Slow => fl.slow = Some(slow_rate),
            }
        }
    }
}

/// `provbox sim`: simulated phones against any provisioning server.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Examples:
  provbox sim --dhcp 127.0.0.1:6767 --phones 20 --model 450HD,445HD
  provbox sim --static-url 'https://127.0.0.1:20443/450HD.img;<MAC>.cfg' --phones 5
  provbox sim --broadcast --interface veth1 --assign-addresses --phones 3   (root)
  provbox sim make-image --model 450HD --version 3.4.8 --size 20MiB")]
pub struct SimArgs {
    /// The DHCP server (relay mode: the phones act as relay agents from --giaddr).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["broadcast", "static_url"])]
    pub dhcp: Option<SocketAddr>,
    /// Relay (gateway) address the phones send from in relay mode; the server's pool
    /// for it should lie in 127.0.0.0/8 so phones can bind to their leases.
    #[arg(long, default_value = "127.77.0.1")]
    pub giaddr: Ipv4Addr,
    /// Normal DHCP client: broadcast from port 68 to 67 (needs root; for a real segment
    /// or a network namespace).
    #[arg(long)]
    pub broadcast: bool,
    /// Broadcast mode: bind DHCP to this interface.
    #[arg(long, requires = "broadcast")]
    pub interface: Option<String>,
    /// Broadcast mode: add each leased address to --interface (`ip addr add IP/32`) and
    /// bind the phone's transfers to it; removed when the phone finishes.
    #[arg(long, requires = "interface")]
    pub assign_addresses: bool,
    /// No DHCP: provision from this URL as if it came in option 160 (the phone's
    /// Static method), e.g. 'https://127.0.0.1:20443/450HD.img;<MAC>.cfg'.
    #[arg(long, value_name = "URL", conflicts_with = "broadcast")]
    pub static_url: Option<String>,
    /// With --static-url: phone i uses this address + i (must be local, e.g. 127.x).
    #[arg(long, default_value = "127.78.0.10")]
    pub static_ip: Ipv4Addr,

    /// Number of phones.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub phones: usize,
    /// Models, comma-separated or repeated, assigned round-robin.
    #[arg(long, value_delimiter = ',', default_value = "450HD")]
    pub model: Vec<String>,
    /// Firmware families, assigned round-robin (2.x, uc).
    #[arg(long, value_delimiter = ',', default_value = "uc")]
    pub family: Vec<Family>,
    /// Running firmware version at power-on (default 2.2.8.61 for 2.x, 3.4.6.604 for uc).
    #[arg(long)]
    pub running_version: Option<String>,
    /// First MAC; the others follow (OUI 00:90:8F for AudioCodes).
    #[arg(long, default_value = "00:90:8f:10:00:01")]
    pub mac_start: MacAddr,
    /// Case of the MAC in file names.
    #[arg(long, value_enum, default_value = "auto")]
    pub mac_case: MacCase,
    /// Send option 77 with RFC 3004 length framing instead of raw ASCII.
    #[arg(long)]
    pub user_class_rfc3004: bool,

    /// How the firmware header is read over HTTP (FTP always closes early; TFTP sends
    /// an ERROR after --tftp-header-blocks blocks).
    #[arg(long, value_enum, default_value = "early-close")]
    pub header_check: HeaderCheck,
    /// Bytes read by the header check.
    #[arg(long, default_value_t = 1024)]
    pub header_bytes: u64,
    /// TFTP blocks read by the header check before the phone sends ERROR.
    #[arg(long, default_value_t = 2)]
    pub tftp_header_blocks: u16,
    /// Port for TFTP URLs that name none (option 66 holding only a host).
    #[arg(long, default_value_t = 69)]
    pub tftp_port: u16,
    /// TFTP block size offered.
    #[arg(long, default_value_t = 1428)]
    pub tftp_blksize: u16,
    /// TFTP window size offered (RFC 7440; 1 = lock-step).
    #[arg(long, default_value_t = 1)]
    pub tftp_windowsize: u16,
    /// Do not offer the TFTP tsize option.
    #[arg(long)]
    pub no_tftp_tsize: bool,
    /// TFTP per-packet timeout.
    #[arg(long, default_value = "5s", value_parser = dur)]
    pub tftp_timeout: Duration,
    /// TFTP retransmissions per packet.
    #[arg(long, default_value_t = 5)]
    pub tftp_retries: u32,
    /// Verify HTTPS servers against this CA (PEM). Default: accept any certificate.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Time to burn a new image.
    #[arg(long, default_value = "2s", value_parser = dur)]
    pub burn: Duration,
    /// Time from reboot to the next DHCPDISCOVER.
    #[arg(long, default_value = "1s", value_parser = dur)]
    pub reboot: Duration,
    /// Delay between consecutive phones powering on.
    #[arg(long, default_value = "10ms", value_parser = dur)]
    pub stagger: Duration,
    /// Periodic re-check interval (default: the config's provisioning/period/*).
    #[arg(long, value_parser = dur)]
    pub recheck_period: Option<Duration>,
    /// Periodic re-checks after provisioning before a phone stops (0: stop when provisioned).
    #[arg(long, default_value_t = 0)]
    pub rechecks: u32,
    /// Upper bound of the random wait before each periodic check.
    #[arg(long, default_value = "0s", value_parser = dur)]
    pub random_delay: Duration,
    /// Waits between attempts at one file, comma-separated (attempts = count + 1).
    #[arg(long, default_value = "1s,2s", value_delimiter = ',', value_parser = dur)]
    pub retry_backoff: Vec<Duration>,
    /// First DHCP retransmission timeout (doubles up to 8x).
    #[arg(long, default_value = "1s", value_parser = dur)]
    pub dhcp_timeout: Duration,
    /// DHCP sends per message before giving up.
    #[arg(long, default_value_t = 6)]
    pub dhcp_attempts: u32,
    /// TCP connect timeout.
    #[arg(long, default_value = "10s", value_parser = dur)]
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a transfer.
    #[arg(long, default_value = "30s", value_parser = dur)]
    pub read_timeout: Duration,
    /// Each phone ends as failed after this long.
    #[arg(long, default_value = "10m", value_parser = dur)]
    pub time_limit: Duration,
    /// Most boots per phone in one run.
    #[arg(long, default_value_t = 8)]
    pub max_boots: u32,
    /// Accept configs whose system/type names another model.
    #[arg(long)]
    pub no_model_check: bool,
    /// Do not reboot after a config change (default: reboot when network/, provisioning/,
    /// voip/line/ or system/type keys changed).
    #[arg(long)]
    pub no_config_reboot: bool,

    /// Inject a fault: KIND=WHO, KIND one of power-loss, corrupt, wrong-model, slow;
    /// WHO 5% (each phone with that chance), 3 (that many phones), all, or MACs
    /// separated by commas. Repeatable.
    #[arg(long, value_name = "KIND=WHO")]
    pub fault: Vec<FaultArg>,
    /// Slow-link rate for `--fault slow=…`, bytes per second (e.g. 256KiB).
    #[arg(long, default_value = "256KiB", value_parser = image::parse_size)]
    pub slow_rate: u64,
    /// Seed for choosing faulty phones.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Show one progress bar per phone when the fleet has at most this many.
    #[arg(long, default_value_t = 16)]
    pub bars: usize,
}

impl SimArgs {
    /// The phones these arguments describe.
    pub fn specs(&self) -> Result<Vec<PhoneSpec>, SimError> {
        if self.phones == 0 {
            return Err(SimError::Args("--phones must be at least 1".into()));
        }
        if self.model.iter().any(|m| m.is_empty() || m.len() > 16) {
            return Err(SimError::Args(
                "--model: each model must be 1 to 16 characters, e.g. 450HD".into(),
            ));
        }
        let families = if self.family.is_empty() {
            vec![Family::Uc]
        } else {
            self.family.clone()
        };
        let mut specs: Vec<PhoneSpec> = (0..self.phones)
            .map(|i| {
                let mut p = PhoneSpec::new(
                    nth_mac(self.mac_start, i),
                    &self.model[i % self.model.len()],
                    families[i % families.len()],
                );
                if let Some(v) = &self.running_version {
                    p.version = v.clone();
                }
                p.mac_case = self.mac_case;
                p.user_class_rfc3004 = self.user_class_rfc3004;
                p.header_check = self.header_check;
                p.header_bytes = self.header_bytes;
                p.tftp_header_blocks = self.tftp_header_blocks;
                p.strict_model = !self.no_model_check;
                p.config_reboot = !self.no_config_reboot;
                p.max_boots = self.max_boots;
                p.timings = Timings {
                    power_on_delay: self.stagger * i as u32,
                    burn: self.burn,
                    reboot: self.reboot,
                    recheck_period: self.recheck_period,
                    rechecks: self.rechecks,
                    random_delay: self.random_delay,
                    retry_backoff: self.retry_backoff.clone(),
                };
                p
            })
            .collect();
        apply_faults(&mut specs, &self.fault, self.seed, self.slow_rate);
        Ok(specs)
    }

    /// Where the phones provision from.
    pub fn target(&self) -> Result<SimTarget, SimError> {
        let mut t = if let Some(url) = &self.static_url {
            url::ProvUrl::parse(url.split(';').next().unwrap_or(url))
                .map_err(|e| SimError::Args(format!("--static-url: {e}")))?;
            SimTarget::static_url(url, self.static_ip)
        } else if self.broadcast {
            SimTarget::broadcast(self.interface.clone(), self.assign_addresses)
        } else if let Some(d) = self.dhcp {
            SimTarget::relay(d, self.giaddr)
        } else {
            return Err(SimError::Args(
                "say where to provision from: --dhcp ADDR (relay mode on loopback), --broadcast (root), or --static-url URL".into(),
            ));
        };
        t.tftp_port = self.tftp_port;
        t.ca = self.ca.clone();
        t.tftp = TftpSettings {
            blksize: self.tftp_blksize,
            windowsize: self.tftp_windowsize,
            tsize: !self.no_tftp_tsize,
            timeout: self.tftp_timeout,
            retries: self.tftp_retries,
        };
        t.connect_timeout = self.connect_timeout;
        t.read_timeout = self.read_timeout;
        t.dhcp_retransmit = Retransmit {
            first: self.dhcp_timeout,
            max: self.dhcp_timeout * 8,
            attempts: self.dhcp_attempts,
        };
        t.time_limit = self.time_limit;
        Ok(t)
    }
}

/// `provbox sim`: runs the fleet with progress bars (unless `--quiet`/`--json`), then
/// prints the table (stderr when `--json` prints the report on stdout).
pub async fn run(args: SimArgs) -> anyhow::Result<SimReport> {
    let specs = args.specs()?;
    let target = args.target()?;
    let progress: Option<Arc<dyn ProgressSink>> = if args.quiet || args.json {
        None
    } else {
        Some(Arc::new(TerminalProgress::new(specs.len(), args.bars)))
    };
    let report = run_fleet(specs, target, progress).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(report)
}

/// `provbox sim make-image`: writes the image and prints what it wrote.
pub fn make_image_cli(args: &MakeImageArgs) -> anyhow::Result<PathBuf> {
    let (path, h) = make_image(args)?;
    println!(
        "{}: PROVBOX-SIM test image (NOT A VENDOR FORMAT), model {}, version {}, date {}, {} bytes",
        path.display(),
        h.model,
        h.version,
        h.date,
        h.length
    );
    Ok(path)
}

/// Picks a random free 127.x.y.0/24 base for relay tests so parallel runs do not
/// collide (not used by the CLI).
pub fn random_loopback_net() -> Ipv4Addr {
    let mut r = rand::rng();
    Ipv4Addr::new(127, r.random_range(80..=250), r.random_range(0..=255), 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn args_build_specs_and_faults() {
        let cli = Cli::parse_from([
            "x",
            "--dhcp",
            "127.0.0.1:6767",
            "-n",
            "10",
            "--model",
            "450HD,445HD",
            "--family",
            "2.x,uc",
            "--fault",
            "power-loss=2",
            "--fault",
            "wrong-model=00:90:8f:10:00:01",
            "--fault",
            "slow=all",
            "--stagger",
            "5ms",
        ]);
        let specs = cli.sim.specs().unwrap();
        assert_eq!(specs.len(), 10);
        assert_eq!(specs[1].model, "445HD");
        assert_eq!(specs[0].family, Family::Gen2);
        assert_eq!(specs[1].family, Family::Uc);
        assert_eq!(specs[9].mac.to_string(), "00:90:8f:10:00:0a");
        assert_eq!(specs.iter().filter(|p| p.faults.power_loss).count(), 2);
        assert!(specs[0].faults.wrong_model && !specs[1].faults.wrong_model);
        assert!(specs.iter().all(|p| p.faults.slow == Some(256 * 1024)));
        assert_eq!(specs[2].timings.power_on_delay, Duration::from_millis(10));
        assert!(matches!(
            cli.sim.target().unwrap().dhcp,
            DhcpTarget::Relay { .. }
        ));
        // Same seed, same choice.
        assert_eq!(
            cli.sim
                .specs()
                .unwrap()
                .iter()
                .map(|p| p.faults.power_loss)
                .collect::<Vec<_>>(),
            specs
                .iter()
                .map(|p| p.faults.power_loss)
                .collect::<Vec<_>>()
        );
        assert!("boom=1".parse::<FaultArg>().is_err());
        assert!("corrupt=150%".parse::<FaultArg>().is_err());
    }

    #[test]
    fn user_agents_and_mac_case() {
        let mac: MacAddr = "00:90:8f:9d:89:92".parse().unwrap();
        let uc = PhoneSpec::new(mac, "C450HD", Family::Uc);
        assert_eq!(
            uc.user_agent("3.4.6.604"),
            "AUDC/3.4.6.604 AUDC-IPPhone-C450HD_UC_3.4.6.604/1"
        );
        assert_eq!(uc.mac_in_names(), "00908F9D8992");
        let mut g2 = PhoneSpec::new(mac, "440HD", Family::Gen2);
        g2.hw_type = Some("440HDG-Rev0".into());
        assert_eq!(
            g2.user_agent("2.2.8.61"),
            "AUDC-IPPhone/2.2.8.61 (440HDG-Rev0; 00908F9D8992)"
        );
        assert_eq!(g2.mac_in_names(), "00908f9d8992");
        g2.mac_case = MacCase::Upper;
        assert_eq!(g2.mac_in_names(), "00908F9D8992");
        assert_eq!(
            nth_mac("00:90:8f:ff:ff:ff".parse().unwrap(), 1).to_string(),
            "00:90:8f:00:00:00"
        );
    }

    proptest::proptest! {
        /// Whatever a DHCP server or a file server sends, parsing never panics.
        #[test]
        fn wire_input_never_panics(text in ".{0,200}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = url::from_option160(&text, "450HD", "00908F000001");
            let _ = url::from_66_67(Some(&text), Some(&text), "450HD", "00908f000001");
            if let Ok(u) = url::ProvUrl::parse("http://h/a/b.cfg") {
                let _ = u.join(&text);
            }
            let _ = config_file::parse(&bytes);
            let _ = config_file::parse(text.as_bytes());
            let _ = image::parse_header(&bytes);
            let _ = image::validate(&bytes);
            let mut v = image::ImageValidator::new();
            for c in bytes.chunks(7) {
                let _ = v.feed(c);
            }
            let _ = v.finish();
            if let Some(m) = dhcp_client::decode(&bytes) {
                let _ = dhcp_client::lease_from(&m);
            }
        }
    }
}
