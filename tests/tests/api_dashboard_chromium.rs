//! The dashboard in real headless Chromium (Debian's `/usr/bin/chromium`), driven over
//! the DevTools protocol: a phone's row appears, its progress bar moves as events
//! arrive over SSE, a new phone appears without a reload, and a click opens its
//! timeline. Events are published into the bus the served router reads.
//!
//! Set `PROVBOX_DASHBOARD_SCREENSHOT=/tmp/x.png` to also save what the page looks like.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use api_support::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const CHROMIUM: &str = "/usr/bin/chromium";

struct Chrome {
    child: Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: Option<String>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Chrome {
    async fn launch() -> Chrome {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1400,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium is installed at /usr/bin/chromium (apt-get install chromium)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let ws_url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    return url.trim().to_string();
                }
            }
            panic!("chromium exited without a DevTools endpoint");
        })
        .await
        .expect("chromium started within 60 s");
        // Keep draining stderr so chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap();
        Chrome {
            child,
            ws,
            session: None,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends a command and waits for its answer (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let m = self
                    .ws
                    .next()
                    .await
                    .expect("devtools connection open")
                    .unwrap();
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["id"] == json!(id) {
                        return v;
                    }
                }
            }
        })
        .await
        .expect("devtools answered within 30 s");
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    async fn open(&mut self, url: &str) {
        let t = self
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target = t["targetId"].as_str().unwrap().to_string();
        let a = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        self.session = Some(a["sessionId"].as_str().unwrap().to_string());
        self.call("Page.enable", json!({})).await;
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` every 100 ms until `ok` accepts it (at most 150 tries).
    async fn poll(&mut self, expr: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..150 {
            last = self.eval(expr).await;
            if ok(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("`{expr}` never satisfied the condition; last value {last}");
    }

    async fn close(mut self) {
        self.session = None;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.call("Browser.close", json!({})),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn bar_of(mac: &str) -> String {
    format!(
        "(() => {{ const b = document.querySelector('tr[data-key=\"{mac}\"] .bar'); \
         return b && b.hasAttribute('aria-valuenow') ? Number(b.getAttribute('aria-valuenow')) : null }})()"
    )
}

#[tokio::test]
async fn a_row_appears_and_its_progress_bar_moves() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "this test needs Debian's chromium at {CHROMIUM}"
    );
    let token = "dash-token";
    let api = start(Some(token)).await;
    let size = 10_000_000u64;
    lease(&api.bus, 7);
    let id = start_download(&api.bus, 7, size);
    progress(&api.bus, id, size / 10);
    api.tracker
        .wait_for(
            &mac(7),
            provbox::tracker::PhoneState::FirmwareCheck,
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let mut chrome = Chrome::launch().await;
    // The token comes in the address, as an operator would open it.
    chrome.open(&format!("{}/?token={token}", api.url)).await;

    let first = chrome
        .poll(&bar_of(&mac(7)), |v| v.is_number())
        .await
        .as_f64()
        .unwrap();
    assert!((9.0..=11.0).contains(&first), "first observation {first}");
    // A marker that a reload would wipe.
    chrome.eval("window.__stayed = 1").await;
    // Wait for the live stream before publishing more.
    chrome
        .poll("document.getElementById('conn').dataset.state", |v| {
            v == "live"
        })
        .await;

    progress(&api.bus, id, size * 7 / 10);
    let second = chrome
        .poll(&bar_of(&mac(7)), |v| v.as_f64().is_some_and(|x| x > first))
        .await
        .as_f64()
        .unwrap();
    assert!(second > first, "the bar moved: {first} → {second}");
    assert!(
        (69.0..=71.0).contains(&second),
        "second observation {second}"
    );
    let sub = chrome
        .eval(&format!(
            "document.querySelector('tr[data-key=\"{}\"] .prog-sub').textContent",
            mac(7)
        ))
        .await;
    assert!(sub.as_str().unwrap().contains("of 9.5 MiB"), "{sub}");
    // TFTP's link figures, when the server reports them, join the progress line.
    api.bus
        .publish(provbox_protocols::events::EventKind::TransferProgress {
            id,
            bytes: size * 72 / 100,
            rtt_us: Some(2_400),
            retransmits: 5,
        });
    let sub = chrome
        .poll(
            &format!(
                "document.querySelector('tr[data-key=\"{}\"] .prog-sub').textContent",
                mac(7)
            ),
            |v| v.as_str().is_some_and(|s| s.contains("rtt")),
        )
        .await;
    assert!(
        sub.as_str().unwrap().contains("rtt 2.40 ms, 5 resent"),
        "{sub}"
    );

    // A new phone shows up live, without a reload.
    lease(&api.bus, 8);
    chrome
        .poll(
            &format!("!!document.querySelector('tr[data-key=\"{}\"]')", mac(8)),
            |v| v == true,
        )
        .await;
    finish(&api.bus, id, size);
    chrome
        .poll(
            &format!(
                "document.querySelector('tr[data-key=\"{}\"] .pill').textContent",
                mac(7)
            ),
            |v| v == "burning",
        )
        .await;
    assert_eq!(
        chrome.eval("window.__stayed").await,
        json!(1),
        "the page was not reloaded"
    );
    let counters = chrome
        .eval("document.querySelector('.counter[data-filter=\"burning\"] .n').textContent")
        .await;
    assert_eq!(counters, json!("1"));

    // A click opens the phone's timeline across DHCP and HTTP.
    chrome
        .eval(&format!(
            "document.querySelector('tr[data-key=\"{}\"]').click()",
            mac(7)
        ))
        .await;
    let sources = chrome
        .poll(
            "[...document.querySelectorAll('#d-timeline .tag')].map(t => t.textContent).join(',')",
            |v| {
                v.as_str()
                    .is_some_and(|s| s.contains("dhcp") && s.contains("http"))
            },
        )
        .await;
    assert!(sources.as_str().unwrap().contains("tracker"));

    if let Ok(path) = std::env::var("PROVBOX_DASHBOARD_SCREENSHOT") {
        screenshot(&api, &mut chrome, &path).await;
    }
    chrome.close().await;
}

/// Populates a varied fleet and saves what the page looks like (`PATH`) and with a
/// phone's timeline open (`PATH` with `-drawer` before the extension).
async fn screenshot(api: &Api, chrome: &mut Chrome, path: &str) {
    use base64::Engine;
    use provbox_protocols::EventKind;
    chrome
        .eval("document.getElementById('d-close').click()")
        .await;
    for i in 10..22u8 {
        lease(&api.bus, i);
        let size = 24_000_000;
        let id = start_download(&api.bus, i, size);
        match i % 6 {
            0 => progress(&api.bus, id, size * u64::from(i) / 30),
            1 => finish(&api.bus, id, size),
            2 => {
                finish(&api.bus, id, size);
                lease(&api.bus, i);
                config(&api.bus, i);
            }
            3 => {
                api.bus.publish(EventKind::TransferAborted {
                    id,
                    bytes: size / 3,
                    reason: "connection reset by peer".into(),
                    duration_ms: 4000,
                });
            }
            4 => progress(&api.bus, id, size * 2 / 5),
            _ => progress(&api.bus, id, size / 20),
        };
    }
    chrome
        .call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let save = |chrome_png: Value, to: &str| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(chrome_png["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(to, bytes).unwrap();
    };
    save(
        chrome
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await,
        path,
    );
    chrome
        .eval(&format!(
            "document.querySelector('tr[data-key=\"{}\"]').click()",
            mac(12)
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let drawer = match path.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}-drawer.{ext}"),
        None => format!("{path}-drawer"),
    };
    save(
        chrome
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await,
        &drawer,
    );
}
