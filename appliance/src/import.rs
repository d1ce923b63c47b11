//! `provbox import-leases`: moves a lab's leases from the DHCP server it ran before
//! (dnsmasq's lease file, Kea's memfile CSV) into provbox's lease database, so every
//! phone keeps its address across the switch.
//!
//! Offline by design: the database is opened exclusively, so a running `provbox serve`
//! makes this fail with a message, never with two writers. Leases outside the
//! configured `[dhcp]` subnet are skipped and listed (the server would NAK them), and
//! so are Kea's declined and reclaimed records. Both formats are read with a few
//! lines of splitting: neither has a maintained Rust parser.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use provbox_config::{Config, MacAddr};
use provbox_storage::leases::{Lease, LeaseDb, LeaseState, LeaseWrite};

/// The lease file formats understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LeaseFormat {
    /// dnsmasq's `dnsmasq.leases`: `<expiry> <mac> <ip> <hostname> <client-id>`.
    Dnsmasq,
    /// Kea's memfile `kea-leases4.csv` (the last record of an address wins).
    Kea,
}

#[derive(Debug, clap::Args)]
pub struct ImportLeasesArgs {
    /// The config `serve` runs with: it names the state directory and the subnet.
    #[arg(short, long, env = "PROVBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// The format of FILE.
    #[arg(long)]
    pub from: LeaseFormat,
    /// Show what would be imported without writing.
    #[arg(long)]
    pub dry_run: bool,
    /// The lease file.
    pub file: PathBuf,
}

/// One lease read from a foreign file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Foreign {
    line: usize,
    mac: MacAddr,
    ip: Ipv4Addr,
    /// Milliseconds since the epoch; `None` for a lease that never expires.
    expires_at_ms: Option<u64>,
    hostname: Option<String>,
}

/// A line that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Skipped {
    line: usize,
    why: String,
}

fn parse_dnsmasq(text: &str) -> (Vec<Foreign>, Vec<Skipped>) {
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        let f: Vec<&str> = l.split_whitespace().collect();
        // `duid <id>` and IPv6 leases (whose second field is an IAID, not a MAC).
        if f.is_empty() || f[0] == "duid" {
            continue;
        }
        let parsed = (|| {
            let [expiry, mac, ip, host, ..] = f.as_slice() else {
                return Err("expected `<expiry> <mac> <ip> <hostname> <client-id>`".to_string());
            };
            let ip: Ipv4Addr = ip.parse().map_err(|_| {
                format!("`{ip}` is not an IPv4 address (IPv6 leases are not imported)")
            })?;
            let mac: MacAddr = mac
                .parse()
                .map_err(|_| format!("`{mac}` is not a MAC address"))?;
            let expiry: u64 = expiry
                .parse()
                .map_err(|_| format!("`{expiry}` is not an expiry time"))?;
            Ok(Foreign {
                line,
                mac,
                ip,
                // dnsmasq writes 0 for an infinite lease.
                expires_at_ms: (expiry != 0).then(|| expiry.saturating_mul(1000)),
                hostname: (*host != "*").then(|| host.to_string()),
            })
        })();
        match parsed {
            Ok(l) => out.push(l),
            Err(why) => skipped.push(Skipped { line, why }),
        }
    }
    (out, skipped)
}

fn parse_kea(text: &str) -> (Vec<Foreign>, Vec<Skipped>) {
    let (mut out, mut skipped) = (Vec::<Foreign>::new(), Vec::new());
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        return (out, skipped);
    };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(a), Some(h), Some(e), Some(n), Some(s)) = (
        col("address"),
        col("hwaddr"),
        col("expire"),
        col("hostname"),
        col("state"),
    ) else {
        skipped.push(Skipped {
            line: 1,
            why:
                "not a Kea lease4 CSV: the header lacks address, hwaddr, expire, hostname or state"
                    .into(),
        });
        return (out, skipped);
    };
    for (i, l) in lines {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        // Kea escapes commas inside values (`&#x2c`), so a plain split is exact.
        let f: Vec<&str> = l.split(',').collect();
        let get = |k: usize| f.get(k).map(|v| v.trim()).unwrap_or("");
        let parsed = (|| {
            let ip: Ipv4Addr = get(a)
                .parse()
                .map_err(|_| format!("`{}` is not an IPv4 address", get(a)))?;
            let mac: MacAddr = get(h)
                .parse()
                .map_err(|_| format!("`{}` is not a MAC address", get(h)))?;
            let expire: u64 = get(e)
                .parse()
                .map_err(|_| format!("`{}` is not an expiry time", get(e)))?;
            match get(s) {
                "0" => {}
                "1" => return Err("declined in Kea; not imported".to_string()),
                other => {
                    return Err(format!(
                        "state {other} (expired or reclaimed); not imported"
                    ));
                }
            }
            let host = get(n);
            Ok(Foreign {
                line,
                mac,
                ip,
                expires_at_ms: Some(expire.saturating_mul(1000)),
                hostname: (!host.is_empty()).then(|| host.to_string()),
            })
        })();
        match parsed {
            Ok(l) => {
                // Kea appends: a later record of the same address replaces the earlier.
                out.retain(|o| o.ip != l.ip);
                out.push(l);
            }
            Err(why) => skipped.push(Skipped { line, why }),
        }
    }
    (out, skipped)
}

pub async fn run(args: ImportLeasesArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load_with_env(args.config.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the config names the state directory and the subnet")?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read the lease file {}", args.file.display()))?;
    let (found, mut skipped) = match args.from {
        LeaseFormat::Dnsmasq => parse_dnsmasq(&text),
        LeaseFormat::Kea => parse_kea(&text),
    };
    let subnet = config.dhcp.effective_subnet();
    let mut keep = Vec::new();
    for l in found {
        match subnet {
            Some(net) if !net.contains(l.ip) => skipped.push(Skipped {
                line: l.line,
                why: format!(
                    "{} is outside the [dhcp] subnet {net}; the server would NAK it",
                    l.ip
                ),
            }),
            None => skipped.push(Skipped {
                line: l.line,
                why: "no [dhcp] subnet is configured (set [dhcp] subnet or server_ip)".into(),
            }),
            _ => keep.push(l),
        }
    }
    // Leases that never expire get ten years (a redb record needs a time).
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let forever = now_ms + 10 * 365 * 24 * 3600 * 1000;
    let batch: Vec<LeaseWrite> = keep
        .iter()
        .map(|l| {
            LeaseWrite::Put(Lease {
                mac: l.mac,
                ip: l.ip,
                expires_at_ms: l.expires_at_ms.unwrap_or(forever),
                model: None,
                hostname: l.hostname.clone(),
                state: LeaseState::Bound,
            })
        })
        .collect();
    let mut out = String::new();
    use std::fmt::Write as _;
    for l in &keep {
        let _ = writeln!(
            out,
            "  {} {}{}",
            l.ip,
            l.mac,
            l.hostname
                .as_deref()
                .map(|h| format!(" ({h})"))
                .unwrap_or_default()
        );
    }
    for s in &skipped {
        let _ = writeln!(
            out,
            "  skipped {}:{}: {}",
            args.file.display(),
            s.line,
            s.why
        );
    }
    if !args.dry_run && !batch.is_empty() {
        let path = config.state.dir.join("leases.redb");
        let db = LeaseDb::open(&path).with_context(|| {
            format!(
                "cannot open the lease database {} (stop `provbox serve` first: it holds the database)",
                path.display()
            )
        })?;
        db.apply(&batch)
            .with_context(|| format!("cannot write the lease database {}", path.display()))?;
    }
    let _ = writeln!(
        out,
        "{} {} lease{} from {}, {} skipped",
        if args.dry_run {
            "would import"
        } else {
            "imported"
        },
        keep.len(),
        if keep.len() == 1 { "" } else { "s" },
        args.file.display(),
        skipped.len()
    );
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsmasq_leases_parse_and_bad_lines_are_named() {
        let text = "1764150000 00:90:8f:12:34:56 192.0.2.50 desk-1 01:00:90:8f:12:34:56\n\
                    0 00:90:8F:AB:CD:EF 192.0.2.51 * *\n\
                    duid 00:01:00:01:2c:aa\n\
                    1764150000 1234 2001:db8::5 * 00:01\n\
                    garbage\n";
        let (l, s) = parse_dnsmasq(text);
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(l[0].hostname.as_deref(), Some("desk-1"));
        assert_eq!(l[0].expires_at_ms, Some(1_764_150_000_000));
        assert_eq!((l[1].expires_at_ms, l[1].hostname.as_deref()), (None, None));
        assert_eq!(
            s.iter().map(|s| s.line).collect::<Vec<_>>(),
            [4, 5],
            "{s:?}"
        );
    }

    #[test]
    fn kea_csv_keeps_the_last_record_of_an_address_and_only_bound_ones() {
        let text = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context,pool_id\n\
                    192.0.2.50,00:90:8f:12:34:56,,3600,1764150000,1,0,0,,0,,0\n\
                    192.0.2.50,00:90:8f:12:34:57,,3600,1764153600,1,0,0,desk-2,0,,0\n\
                    192.0.2.52,00:90:8f:12:34:58,,3600,1764150000,1,0,0,,1,,0\n\
                    192.0.2.53,00:90:8f:12:34:59,,3600,1764150000,1,0,0,,2,,0\n";
        let (l, s) = parse_kea(text);
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(l[0].mac.to_string(), "00:90:8f:12:34:57");
        assert_eq!(l[0].hostname.as_deref(), Some("desk-2"));
        assert_eq!(s.len(), 2, "{s:?}");
        let (l, s) = parse_kea("not,a,lease,file\n1,2,3,4\n");
        assert!(l.is_empty() && s.len() == 1, "{s:?}");
    }
}
