//! `provbox healthcheck`: exits 0 when the running appliance answers, 1 when it does
//! not. It is the container image's HEALTHCHECK: distroless and slim images have no
//! curl, and the API can stay on loopback inside the container.
//!
//! It reads the same config (file and `PROVBOX_*` variables) as `serve`, then asks the
//! API's `/healthz` (with the bearer token when one is set); with the API disabled it
//! asks the HTTP file server instead, where any HTTP answer means it is serving.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use provbox_config::Config;

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The config `serve` runs with (PROVBOX_* overrides apply the same way).
    #[arg(short, long, env = "PROVBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// Where a client on this host reaches a server bound to `bind`.
fn local(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

/// One HTTP/1.1 GET; the status code.
async fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<http::StatusCode> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {addr}"))?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "provbox-healthcheck");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(Empty::<bytes::Bytes>::new())?)
        .await
        .with_context(|| format!("GET http://{addr}{path}"))?;
    Ok(resp.status())
}

/// Checks the appliance `config` describes; `Ok(description)` when it is serving.
pub async fn check(config: &Config, timeout: Duration) -> anyhow::Result<String> {
    let probe = async {
        if config.api.enabled {
            let addr = local(config.api.bind);
            let status = get(addr, "/healthz", config.api.token.as_deref()).await?;
            if !status.is_success() {
                bail!("http://{addr}/healthz answered {status}");
            }
            Ok(format!("http://{addr}/healthz: {status}"))
        } else if config.http.enabled {
            let addr = local(config.http.bind);
            let status = get(addr, "/", None).await?;
            if status.is_server_error() {
                bail!("http://{addr}/ answered {status}");
            }
            Ok(format!(
                "http://{addr}/ answered {status} (the API is disabled)"
            ))
        } else {
            bail!("nothing to ask: [api] and [http] are both disabled")
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
}

pub async fn run(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load_with_env(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("provbox: {e}");
            return Ok(ExitCode::from(64));
        }
    };
    match check(&config, Duration::from_secs(args.timeout.max(1))).await {
        Ok(what) => {
            println!("healthy: {what}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("unhealthy: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}
