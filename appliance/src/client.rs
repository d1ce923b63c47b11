//! The CLI commands that talk to a running instance's API: `provbox devices` (a table
//! or JSON), `provbox watch` (a live terminal view with a progress bar per phone) and
//! `provbox report --junit FILE` (one testcase per phone, for CI pipelines).
//!
//! Also the small HTTP/SSE client they use ([`ApiClient`], [`SseStream`]), public so
//! tests drive the API through the same code. It speaks plain HTTP/1.1 (the API is a
//! LAN service without TLS); the SSE parser is a few lines, so no SSE crate is needed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::api::FEED_SEQ_HEADER;
use crate::tracker::{DeviceView, PhoneState, Receipt};

/// A client for one instance's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl ApiClient {
    /// `api` is the base URL, e.g. `http://127.0.0.1:8080` (a bare `host:port` works).
    pub fn new(api: &str, token: Option<&str>) -> anyhow::Result<ApiClient> {
        let base = if api.contains("://") {
            api.to_string()
        } else {
            format!("http://{api}")
        };
        let base = base.trim_end_matches('/').to_string();
        let uri: Uri = base.parse().with_context(|| {
            format!("`{api}` is not an API address; give one like http://127.0.0.1:8080")
        })?;
        if uri.scheme_str() != Some("http") {
            bail!("the API address `{api}` must be http:// (the provbox API does not serve TLS)");
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ApiClient {
            base,
            token: token.filter(|t| !t.is_empty()).map(str::to_string),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> anyhow::Result<http::Response<Incoming>> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::get(&url);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Empty::new())
            .with_context(|| format!("cannot build a request for {url}"))?;
        self.http.request(req).await.with_context(|| {
            format!("cannot reach the provbox API at {url}: is `provbox serve` running, and is `[api] bind` this address?")
        })
    }

    /// GET `path`; the status, headers and whole body.
    pub async fn get_raw(&self, path: &str) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
        let resp = self.send(path, &[]).await?;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
            .await
            .map_err(|_| anyhow!("{}{path}: the response body took more than 30 s", self.base))?
            .with_context(|| format!("reading the response of {}{path}", self.base))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// GET `path` as JSON, with the API's error message on failure.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.get_json_with_headers(path).await?.0)
    }

    async fn get_json_with_headers<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<(T, HeaderMap)> {
        let (status, headers, body) = self.get_raw(path).await?;
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "{}{path}: the API wants its token; pass --token (or PROVBOX_TOKEN) with `[api] token`",
                self.base
            );
        }
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{}{path}: {status}: {msg}", self.base);
        }
        let v = serde_json::from_slice(&body).with_context(|| {
            format!(
                "{}{path}: unexpected response (is this a provbox API?)",
                self.base
            )
        })?;
        Ok((v, headers))
    }

    /// Every phone, and the feed position the list was taken at.
    pub async fn devices(&self) -> anyhow::Result<(Vec<DeviceView>, u64)> {
        let (list, headers) = self
            .get_json_with_headers::<Vec<DeviceView>>("/api/v1/devices")
            .await?;
        let seq = headers
            .get(FEED_SEQ_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((list, seq))
    }

    /// Opens the SSE stream at `path` (e.g. `/api/v1/events?types=device`), resuming
    /// after `last_event_id` when given.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<SseStream> {
        let mut headers = vec![("accept", "text/event-stream".to_string())];
        if let Some(id) = last_event_id {
            headers.push(("last-event-id", id.to_string()));
        }
        let resp = self.send(path, &headers).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            bail!(
                "{}{path}: the API wants its token; pass --token (or PROVBOX_TOKEN)",
                self.base
            );
        }
        if !resp.status().is_success() {
            bail!("{}{path}: {}", self.base, resp.status());
        }
        Ok(SseStream {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// An open SSE stream.
#[derive(Debug)]
pub struct SseStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl SseStream {
    /// The next event; `None` when the server ended the stream. Comments (keep-alives)
    /// are skipped.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseMessage>> {
        loop {
            if let Some(msg) = take_message(&mut self.buf) {
                match msg {
                    Some(m) => return Ok(Some(m)),
                    None => continue,
                }
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(anyhow!("the event stream broke: {e}")),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Takes one complete message (up to a blank line) off `buf`: `Some(None)` for a
/// block with no data (comments), `None` when no complete block is buffered.
fn take_message(buf: &mut Vec<u8>) -> Option<Option<SseMessage>> {
    let end = find_blank_line(buf)?;
    let block = String::from_utf8_lossy(&buf[..end.0]).into_owned();
    buf.drain(..end.1);
    let mut m = SseMessage {
        event: "message".into(),
        ..Default::default()
    };
    let mut data: Vec<&str> = Vec::new();
    for line in block.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line
            .split_once(':')
            .map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "id" => m.id = Some(value.to_string()),
            "event" => m.event = value.to_string(),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() {
        return Some(None);
    }
    m.data = data.join("\n");
    Some(Some(m))
}

/// (end of block, end of separator) of the first blank line.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, i + 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, i + 4));
        }
    }
    None
}

// ---------------------------------------------------------------- formatting

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_secs(s: u64) -> String {
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn firmware_cell(d: &DeviceView) -> String {
    let now = d.firmware.as_deref().unwrap_or("?");
    match &d.target_firmware {
        Some(t) if d.update_pending => format!("{now} → {t}"),
        _ => now.to_string(),
    }
}

fn progress_text(d: &DeviceView) -> String {
    if let Some(p) = &d.progress {
        let mut s = format!("{:>5.1}% {}", p.pct, p.proto);
        if p.rate_bps > 0 {
            s.push_str(&format!(" {}/s", human_bytes(p.rate_bps)));
        }
        if let Some(eta) = p.eta_s {
            s.push_str(&format!(" ETA {}", human_secs(eta)));
        }
        s
    } else if let Some(b) = &d.burn {
        format!(
            "burning {} / ~{}",
            human_secs(b.elapsed_ms / 1000),
            human_secs(b.expected_ms / 1000)
        )
    } else {
        String::new()
    }
}

fn state_colour(s: PhoneState) -> &'static str {
    match s {
        PhoneState::Provisioned => "\x1b[32m",
        PhoneState::Stalled => "\x1b[33m",
        PhoneState::Failed | PhoneState::ConfigRejected => "\x1b[31m",
        PhoneState::Recovery => "\x1b[91m",
        PhoneState::Burning => "\x1b[35m",
        PhoneState::FirmwareDownload | PhoneState::FirmwareCheck => "\x1b[34m",
        PhoneState::ConfigDownload => "\x1b[36m",
        PhoneState::Rebooted => "\x1b[95m",
        PhoneState::Discovered | PhoneState::Leased => "\x1b[37m",
    }
}

/// The devices table, as `provbox devices` prints it.
pub fn render_table(list: &[DeviceView], width: usize) -> String {
    let headers = [
        "PHONE",
        "ADDRESS",
        "MODEL",
        "FIRMWARE",
        "STATE",
        "PROGRESS",
        "LAST EVENT",
    ];
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|d| {
            [
                d.mac.clone().unwrap_or_else(|| d.key.clone()),
                d.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                d.model.clone().unwrap_or_else(|| "-".into()),
                firmware_cell(d),
                match &d.reason {
                    Some(_) if d.state == PhoneState::Stalled => {
                        format!(
                            "stalled ({})",
                            d.stalled_in.map(|s| s.as_str()).unwrap_or("?")
                        )
                    }
                    _ => d.state.to_string(),
                },
                progress_text(d),
                d.reason
                    .clone()
                    .or(d.last_event.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate().take(6) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let used: usize = w.iter().take(6).sum::<usize>() + 12;
    let last = width.saturating_sub(used).max(20);
    let mut out = String::new();
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 6 {
                l.push_str(&truncate(c, last));
            } else {
                l.push_str(&format!("{:<width$}  ", c, width = w[i]));
            }
        }
        l.trim_end().to_string()
    };
    out.push_str(&line(&headers.map(str::to_string)));
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

fn term_width() -> usize {
    terminal_size::terminal_size()
        .map(|(w, _)| w.0 as usize)
        .unwrap_or(120)
}

/// `provbox devices`: the phones of the instance at `api`, as a table or JSON.
pub async fn devices(api: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let client = ApiClient::new(api, token)?;
    let (list, _) = client.devices().await?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &list).context("writing JSON to stdout")?;
        writeln!(out)?;
    } else if list.is_empty() {
        writeln!(
            out,
            "no phones yet ({} has seen no DHCP or file requests)",
            client.base()
        )?;
    } else {
        write!(out, "{}", render_table(&list, term_width()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- watch

fn bar(pct: f64, width: usize) -> String {
    let filled = ((pct.clamp(0.0, 100.0) / 100.0) * width as f64).round() as usize;
    format!(
        "{}{}",
        "█".repeat(filled),
        "░".repeat(width - filled.min(width))
    )
}

/// One frame of `provbox watch`.
pub fn render_watch(list: &[DeviceView], status: &str, width: usize, colour: bool) -> String {
    let c = |s: PhoneState| if colour { state_colour(s) } else { "" };
    let reset = if colour { "\x1b[0m" } else { "" };
    let dim = if colour { "\x1b[2m" } else { "" };
    let bold = if colour { "\x1b[1m" } else { "" };
    let mut counts: BTreeMap<PhoneState, usize> = BTreeMap::new();
    for d in list {
        *counts.entry(d.state).or_default() += 1;
    }
    let mut out = String::new();
    out.push_str(&format!(
        "{bold}provbox watch{reset}  {dim}{status}{reset}\n"
    ));
    let summary: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{}{s}{reset} {n}", c(*s)))
        .collect();
    out.push_str(&format!(
        "{} phones   {}\n\n",
        list.len(),
        summary.join("  ")
    ));
    let barw = if width >= 130 {
        30
    } else if width >= 100 {
        20
    } else {
        12
    };
    for d in list {
        let name = d.mac.clone().unwrap_or_else(|| d.key.clone());
        let model = d.model.clone().unwrap_or_default();
        let (pct, detail) = if let Some(p) = &d.progress {
            (Some(p.pct), progress_text(d))
        } else if let Some(b) = &d.burn {
            (
                Some((b.elapsed_ms as f64 * 100.0 / b.expected_ms.max(1) as f64).min(100.0)),
                progress_text(d),
            )
        } else if d.state == PhoneState::Provisioned {
            (Some(100.0), String::new())
        } else {
            (None, String::new())
        };
        let barcell = match pct {
            Some(p) => format!("{}{}{reset}", c(d.state), bar(p, barw)),
            None => format!("{dim}{}{reset}", "·".repeat(barw)),
        };
        let tail = d
            .reason
            .clone()
            .or(d.last_event.clone())
            .unwrap_or_default();
        let fixed = 17 + 2 + 8 + 2 + 18 + 2 + barw + 2 + 34 + 2;
        let line = format!(
            "{name:<17}  {model:<8}  {}{:<18}{reset}  {barcell}  {:<34}  {dim}{}{reset}",
            c(d.state),
            truncate(d.state.as_str(), 18),
            truncate(&detail, 34),
            truncate(&tail, width.saturating_sub(fixed).max(10)),
        );
        out.push_str(&line);
        out.push_str(if colour { "\x1b[K\n" } else { "\n" });
    }
    out
}

/// `provbox watch`: a live view of the instance at `api` until Ctrl-C. Reconnects on
/// its own, resuming the event stream where it broke. When stdout is not a terminal
/// it prints one line per state change instead.
pub async fn watch(api: &str, token: Option<&str>) -> anyhow::Result<()> {
    let client = ApiClient::new(api, token)?;
    let tty = std::io::stdout().is_terminal();
    let result = tokio::select! {
        r = watch_loop(&client, tty) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    if tty {
        println!("\x1b[?25h");
        let _ = std::io::stdout().flush();
    }
    result
}

async fn watch_loop(client: &ApiClient, tty: bool) -> anyhow::Result<()> {
    let mut rows: BTreeMap<String, DeviceView> = BTreeMap::new();
    let mut last_id: Option<u64> = None;
    let mut failures = 0u32;
    if tty {
        print!("\x1b[?25l\x1b[2J");
    }
    loop {
        // (Re)load the table when we have no position, or were told to reset.
        if last_id.is_none() {
            match client.devices().await {
                Ok((list, seq)) => {
                    rows = list.into_iter().map(|d| (d.key.clone(), d)).collect();
                    last_id = Some(seq);
                    failures = 0;
                }
                Err(e) if failures == 0 && rows.is_empty() => return Err(e),
                Err(_) => {
                    failures += 1;
                    draw(
                        &rows,
                        &format!("{} unreachable, retrying…", client.base()),
                        tty,
                    );
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            }
        }
        let path = if tty {
            "/api/v1/events?types=device"
        } else {
            "/api/v1/events?types=device,state"
        };
        let mut stream = match client.events(path, last_id).await {
            Ok(s) => s,
            Err(_) => {
                failures += 1;
                draw(
                    &rows,
                    &format!("{} unreachable, retrying…", client.base()),
                    tty,
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let status = format!("live from {}", client.base());
        draw(&rows, &status, tty);
        let mut last_draw = tokio::time::Instant::now();
        let mut dirty = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                m = stream.next() => match m {
                    Ok(Some(m)) => {
                        if let Some(id) = m.id.as_deref().and_then(|i| i.parse().ok()) {
                            last_id = Some(id);
                        }
                        match m.event.as_str() {
                            "device" => {
                                if let Ok(d) = serde_json::from_str::<DeviceView>(&m.data) {
                                    rows.insert(d.key.clone(), d);
                                    dirty = true;
                                }
                            }
                            "removed" => {
                                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&m.data)
                                    && let Some(k) = v.get("key").and_then(|k| k.as_str())
                                {
                                    rows.remove(k);
                                    dirty = true;
                                }
                            }
                            "state" if !tty => println!("{}", m.data),
                            "reset" => {
                                last_id = None;
                                break;
                            }
                            _ => {}
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = tick.tick() => {
                    // The burn bars move with the clock even without events.
                    if dirty || last_draw.elapsed() >= Duration::from_secs(1) {
                        draw(&rows, &status, tty);
                        last_draw = tokio::time::Instant::now();
                        dirty = false;
                    }
                }
            }
        }
        draw(
            &rows,
            &format!("{}: stream ended, reconnecting…", client.base()),
            tty,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn draw(rows: &BTreeMap<String, DeviceView>, status: &str, tty: bool) {
    if !tty {
        return;
    }
    let list: Vec<DeviceView> = rows.values().cloned().map(tick_burn).collect();
    let frame = render_watch(&list, status, term_width(), true);
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "\x1b[H{frame}\x1b[J");
    let _ = out.flush();
}

/// Advances a burn's elapsed time to now (rows only change on events).
fn tick_burn(mut d: DeviceView) -> DeviceView {
    if let Some(b) = d.burn.as_mut() {
        let now = provbox_protocols::events::now_ms();
        b.elapsed_ms = now.saturating_sub(b.started_ms);
    }
    d
}

// ---------------------------------------------------------------- report

/// What `report_junit` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportSummary {
    pub phones: usize,
    pub failures: usize,
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => {}
            c => o.push(c),
        }
    }
    o
}

/// The JUnit XML for a set of receipts: one testcase per phone, failed unless it is
/// provisioned.
pub fn junit_xml(receipts: &[Receipt]) -> String {
    let failures = receipts.iter().filter(|r| !r.provisioned).count();
    let total_s: f64 = receipts
        .iter()
        .filter_map(|r| r.time_to_provisioned_ms)
        .map(|ms| ms as f64 / 1000.0)
        .sum();
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"provbox\" tests=\"{}\" failures=\"{failures}\" time=\"{total_s:.3}\">\n",
        receipts.len()
    ));
    x.push_str(&format!(
        "  <testsuite name=\"provbox phones\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{total_s:.3}\">\n",
        receipts.len()
    ));
    for r in receipts {
        let name = r.mac.clone().unwrap_or_else(|| r.key.clone());
        let class = format!("provbox.{}", r.model.as_deref().unwrap_or("unknown"));
        let time = r
            .time_to_provisioned_ms
            .map(|ms| ms as f64 / 1000.0)
            .unwrap_or(0.0);
        x.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{time:.3}\">\n",
            xml_escape(&class),
            xml_escape(&name)
        ));
        x.push_str("      <properties>\n");
        let prop = |k: &str, v: Option<&str>| match v {
            Some(v) => format!(
                "        <property name=\"{k}\" value=\"{}\"/>\n",
                xml_escape(v)
            ),
            None => String::new(),
        };
        x.push_str(&prop("ip", r.ip.map(|i| i.to_string()).as_deref()));
        x.push_str(&prop("policy", r.policy.as_deref()));
        x.push_str(&prop("firmware_before", r.firmware_before.as_deref()));
        x.push_str(&prop("firmware_after", r.firmware_after.as_deref()));
        x.push_str(&prop("target_firmware", r.target_firmware.as_deref()));
        x.push_str(&prop("state", Some(r.state.as_str())));
        x.push_str("      </properties>\n");
        if !r.provisioned {
            let msg = match &r.reason {
                Some(reason) => format!("{}: {reason}", r.state),
                None => format!("not provisioned: the phone is {}", r.state),
            };
            x.push_str(&format!(
                "      <failure type=\"{}\" message=\"{}\"/>\n",
                xml_escape(r.state.as_str()),
                xml_escape(&msg)
            ));
        }
        let mut out = String::new();
        for f in &r.files {
            out.push_str(&format!(
                "{} {} {} bytes {} in {} ms sha256 {}{}\n",
                f.proto,
                f.file,
                f.bytes,
                f.result,
                f.duration_ms,
                f.sha256,
                f.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        }
        if !out.is_empty() {
            x.push_str(&format!(
                "      <system-out>{}</system-out>\n",
                xml_escape(&out)
            ));
        }
        x.push_str("    </testcase>\n");
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// `provbox report --junit FILE`: every phone's receipt as a JUnit testcase.
pub async fn report_junit(
    api: &str,
    token: Option<&str>,
    path: &Path,
) -> anyhow::Result<ReportSummary> {
    let client = ApiClient::new(api, token)?;
    let (list, _) = client.devices().await?;
    let mut receipts = Vec::with_capacity(list.len());
    for d in &list {
        let key = d.mac.clone().unwrap_or_else(|| d.key.clone());
        let r: Receipt = client
            .get_json(&format!("/api/v1/devices/{key}/receipt"))
            .await?;
        receipts.push(r);
    }
    let xml = junit_xml(&receipts);
    std::fs::write(path, xml)
        .with_context(|| format!("cannot write the JUnit report to {}", path.display()))?;
    let summary = ReportSummary {
        phones: receipts.len(),
        failures: receipts.iter().filter(|r| !r.provisioned).count(),
    };
    Ok(summary)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_parse() {
        let mut buf = b": keep-alive\n\nid: 7\nevent: device\ndata: {\"a\":1}\n\nid: 8\r\nevent: state\r\ndata: x\r\ndata: y\r\n\r\npartial".to_vec();
        assert_eq!(take_message(&mut buf), Some(None));
        assert_eq!(
            take_message(&mut buf),
            Some(Some(SseMessage {
                id: Some("7".into()),
                event: "device".into(),
                data: "{\"a\":1}".into()
            }))
        );
        assert_eq!(
            take_message(&mut buf),
            Some(Some(SseMessage {
                id: Some("8".into()),
                event: "state".into(),
                data: "x\ny".into()
            }))
        );
        assert_eq!(take_message(&mut buf), None);
        assert_eq!(buf, b"partial");
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(xml_escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
    }

    fn row(key: &str, state: PhoneState, pct: Option<f64>) -> DeviceView {
        let v = serde_json::json!({
            "key": key, "mac": key, "ip": "127.77.0.10", "static_ip": false, "model": "450HD", "vendor": null,
            "policy": null, "firmware": "3.4.6.604", "firmware_source": "user_agent", "target_firmware": "3.4.8.198",
            "target_image": null, "update_pending": true, "state": state, "state_since_ms": 0, "reason": null,
            "stalled_in": null, "burn": null, "first_seen_ms": 0, "last_seen_ms": 0, "last_event": "DHCPACK",
            "active_transfers": 1, "provisioned_ms": null, "now_ms": 0,
            "progress": pct.map(|p| serde_json::json!({
                "transfer_id": 1, "proto": "tftp", "file": "450HD.img", "kind": "firmware", "bytes": 50,
                "total": 100, "pct": p, "rate_bps": 2048, "eta_s": 25, "started_ms": 0, "last_progress_ms": 0
            })),
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn watch_frame_has_a_bar_per_phone() {
        let list = vec![
            row(
                "00:90:8f:00:00:01",
                PhoneState::FirmwareDownload,
                Some(50.0),
            ),
            row("00:90:8f:00:00:02", PhoneState::Leased, None),
        ];
        let f = render_watch(&list, "live", 120, false);
        let lines: Vec<&str> = f.lines().collect();
        assert!(lines[1].starts_with("2 phones"), "{f}");
        assert!(
            lines[1].contains("leased 1") && lines[1].contains("firmware_download 1"),
            "{f}"
        );
        assert!(
            lines[3].contains(&format!("{}{}", "█".repeat(10), "░".repeat(10))),
            "{f}"
        );
        assert!(lines[3].contains("50.0% tftp 2.0 KiB/s ETA 25s"), "{f}");
        assert!(lines[4].contains(&"·".repeat(20)), "{f}");
        let t = render_table(&list, 200);
        assert!(
            t.lines().nth(1).unwrap().contains("3.4.6.604 → 3.4.8.198"),
            "{t}"
        );
    }

    #[test]
    fn addresses() {
        assert!(ApiClient::new("127.0.0.1:8080", None).is_ok());
        assert!(ApiClient::new("https://x", None).is_err());
        assert_eq!(
            ApiClient::new("http://h:1/", None).unwrap().base(),
            "http://h:1"
        );
    }
}
