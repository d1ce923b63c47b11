//! `provbox check`: validates the config and looks at the store without changing
//! anything; with `--model`/`--mac` it explains what that phone would be given.

use std::path::PathBuf;
use std::process::ExitCode;

use provbox_config::{Config, MacAddr};
use provbox_storage::FileKind;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The config file; the defaults are checked without one.
    #[arg(short, long, env = "PROVBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Explain what a phone of this model (as in DHCP option 60/77) would get.
    #[arg(long)]
    pub model: Option<String>,
    /// Explain what the phone with this MAC would get.
    #[arg(long)]
    pub mac: Option<MacAddr>,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    // Built in a buffer and written once: `provbox check | head` must not panic on a
    // closed pipe (println! would).
    let mut out = String::new();
    let code = report(args, &mut out);
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    Ok(code)
}

fn report(args: CheckArgs, out: &mut String) -> ExitCode {
    use std::fmt::Write as _;
    // Exactly what `serve` would run: the file (or defaults) plus PROVBOX_* overrides.
    let config = Config::load_with_env(args.config.as_deref());
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "config: INVALID\n  {e}");
            return ExitCode::from(64);
        }
    };
    let src = args
        .config
        .as_ref()
        .map_or("built-in defaults".to_string(), |p| p.display().to_string());
    let _ = writeln!(out, "config: OK ({src})");
    for (name, enabled, bind) in [
        (
            "dhcp",
            config.dhcp.enabled && config.dhcp.pool.is_some(),
            config.dhcp.bind,
        ),
        ("tftp", config.tftp.enabled, config.tftp.bind),
        ("ftp", config.ftp.enabled, config.ftp.bind),
        ("http", config.http.enabled, config.http.bind),
        ("https", config.https.enabled, config.https.bind),
        ("api", config.api.enabled, config.api.bind),
    ] {
        let _ = writeln!(
            out,
            "  {name:<6} {}",
            if enabled {
                bind.to_string()
            } else {
                "off".to_string()
            }
        );
    }
    match provbox_storage::store::survey(&config.store.root) {
        Ok(s) => {
            let count = |k| s.files.iter().filter(|f| f.kind == k).count();
            let _ = writeln!(
                out,
                "store: {} ({} files: {} firmware, {} config, {} other)",
                config.store.root.display(),
                s.files.len(),
                count(FileKind::Firmware),
                count(FileKind::Config),
                count(FileKind::Other)
            );
            for f in &s.files {
                let (path, model, version, size) = (&f.path, &f.model, &f.version, f.size);
                if f.kind == FileKind::Firmware {
                    let _ = writeln!(
                        out,
                        "  {path:<40} model {:<8} version {:<14} {size} bytes",
                        model.as_deref().unwrap_or("?"),
                        version.as_deref().unwrap_or("(none in name)")
                    );
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "store: {e} (it is created on first start)");
        }
    }
    if args.model.is_some() || args.mac.is_some() {
        let vars = provbox_config::TemplateVars::from_config(&config);
        let e = provbox_protocols::dhcp::explain(
            &config.dhcp,
            &vars,
            args.model.as_deref(),
            args.mac,
            true,
        );
        let _ = writeln!(out, "\n{e}");
    }
    ExitCode::SUCCESS
}
