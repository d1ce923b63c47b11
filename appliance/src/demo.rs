//! `provbox demo`: the whole product in one command, as a normal user.
//!
//! A temporary store with synthetic firmware images (clearly labelled, not a vendor
//! format) and a config per phone for three models; the appliance on loopback high
//! ports with a loopback DHCP pool; a simulated fleet that takes leases, reads firmware
//! headers, downloads, burns, reboots and fetches its config — 450HD over HTTPS,
//! 445HD over TFTP, 430HD over FTP; live progress, the dashboard URL, and a summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use provbox_config::{Config, MacAddr, Match, Policy};

use crate::Appliance;
use crate::sim::image::ImageSpec;
use crate::sim::{Family, Fleet, SimTarget, TerminalProgress};

/// The three demo models and the protocol each is provisioned over.
const MODELS: [(&str, &str); 3] = [("450HD", "https"), ("445HD", "tftp"), ("430HD", "ftp")];
/// The firmware version in the store; the phones run older ones, so all upgrade.
const STORE_VERSION: &str = "3.4.8.198";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many simulated phones.
    #[arg(long, default_value_t = 50)]
    pub phones: usize,
    /// Size of each synthetic firmware image (e.g. 8MiB, 20MiB).
    #[arg(long, default_value = "8MiB")]
    pub image_size: String,
    /// Keep the appliance (and its dashboard) running after the fleet is done, until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Work in this directory instead of a temporary one (kept afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the fleet summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The demo's appliance config: loopback, and one policy per model.
pub fn demo_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.store.root = dir.join("store");
    c.state.dir = dir.join("state");
    c.store.settle = provbox_config::Duration::from_millis(100);
    let policy = |model: &str, url: &str| Policy {
        name: Some(format!(
            "{model} over {}",
            url.split(':').next().unwrap_or("?").to_uppercase()
        )),
        matcher: Match {
            model: Some(model.to_string()),
            ..Match::default()
        },
        provisioning_url: Some(url.to_string()),
        // Recovery (a bricked phone asks only for 66/67, still naming its model in
        // option 77): a matching policy replaces the [dhcp] defaults, so it must carry
        // 66/67 itself.
        tftp_server: Some("{server}".into()),
        boot_file: Some(format!("{model}.img")),
        ..Policy::default()
    };
    c.dhcp.policies = vec![
        policy("450HD", "https://{server}:{https_port}/450HD.img;<MAC>.cfg"),
        policy("445HD", "tftp://{server}:{tftp_port}/445HD.img;<MAC>.cfg"),
        policy("430HD", "ftp://{server}:{ftp_port}/430HD.img;<MAC>.cfg"),
    ];
    // Recovery for phones no policy matches: TFTP.
    c.dhcp.tftp_server = Some("{server}".into());
    c.tracker.default_burn_time = provbox_config::Duration::from_secs(3);
    c
}

/// Writes the demo store: one image per model and one config per phone.
pub fn build_store(store: &Path, fleet: &Fleet, image_size: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(store).with_context(|| format!("cannot create {}", store.display()))?;
    for (model, _) in MODELS {
        let spec = ImageSpec {
            model: model.to_string(),
            version: STORE_VERSION.to_string(),
            date: crate::sim::image::today(),
            size: image_size,
            corrupt: false,
        };
        let path = store.join(format!("{model}_{STORE_VERSION}.img"));
        spec.write_file(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    for p in &fleet.specs {
        let text = format!(
            "; provbox demo config for {mac}\nsystem/type={model}\nvoip/line/0/enabled=1\nvoip/line/0/id={n}\nprovisioning/period/type=daily\n",
            mac = p.mac,
            model = p.model,
            n = p.mac.bare(),
        );
        let path = store.join(format!("{}.cfg", p.mac.bare()));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let image_size = crate::sim::image::parse_size(&args.image_size)
        .map_err(|e| anyhow::anyhow!("--image-size: {e}"))?;
    let (tmp, dir) = match &args.dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("provbox-demo-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            let d = t.path().to_path_buf();
            (Some(t), d)
        }
    };
    let first = MacAddr([0x00, 0x90, 0x8f, 0x10, 0x00, 0x01]);
    let models: Vec<&str> = MODELS.iter().map(|(m, _)| *m).collect();
    // A mixed fleet: every third phone runs generic 2.x firmware, the rest UC 3.x.
    let mut i = 0;
    let fleet = Fleet::generate(args.phones, &models, Family::Uc, first).configure(|p| {
        if i % 3 == 1 {
            p.family = Family::Gen2;
            p.version = Family::Gen2.default_version().to_string();
        }
        // Phones are not all powered on in the same millisecond.
        p.timings.power_on_delay = Duration::from_millis((i as u64 * 37) % 3000);
        i += 1;
    });
    build_store(&dir.join("store"), &fleet, image_size)?;

    let app = Appliance::builder()
        .config(demo_config(&dir))
        .loopback()
        .start()
        .await?;
    let a = app.addrs().clone();
    let dhcp = a.dhcp.context("the demo needs DHCP")?;
    eprintln!("provbox demo in {}", dir.display());
    for (model, proto) in MODELS {
        eprintln!("  {model}: firmware {STORE_VERSION} over {proto}");
    }
    if let Some(api) = a.api {
        eprintln!("  dashboard: http://{api}/");
    }
    eprintln!("  {} simulated phones, DHCP relay to {dhcp}\n", args.phones);

    let mut target = SimTarget::relay(dhcp, std::net::Ipv4Addr::new(127, 77, 0, 1));
    target.tftp_port = a.tftp.map_or(69, |t| t.port());
    target.ca = Some(dir.join("state/tls/cert.pem"));
    target.time_limit = Duration::from_secs(300);
    let progress = Arc::new(TerminalProgress::new(args.phones, 12));
    let report = fleet.run(target, Some(progress)).await?;

    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.table());
    }
    let ok = report.all_provisioned();
    if args.keep {
        if let Some(api) = a.api {
            eprintln!("appliance still running; dashboard at http://{api}/ — Ctrl-C to stop");
        }
        let _ = tokio::signal::ctrl_c().await;
    }
    app.shutdown().await;
    drop(tmp);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
