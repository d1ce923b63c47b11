//! The API over real HTTP on loopback: devices, a device's timeline, receipts, leases,
//! the store, health, Prometheus metrics, bearer-token auth, SSE with resume, and the
//! `devices`/`report` client commands.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;

use std::time::Duration;

use api_support::*;
use provbox::client::{ApiClient, SseMessage, SseStream};
use provbox::tracker::{DeviceDetail, DeviceView, PhoneState, Receipt};

const WAIT: Duration = Duration::from_secs(10);

/// The next message of `stream`, failing the test after 10 s of silence.
async fn next(stream: &mut SseStream) -> SseMessage {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the stream is open")
}

/// Reads until a message satisfies `f` (at most 200 messages).
async fn until(stream: &mut SseStream, f: impl Fn(&SseMessage) -> bool) -> SseMessage {
    for _ in 0..200 {
        let m = next(stream).await;
        if f(&m) {
            return m;
        }
    }
    panic!("no matching event in 200 messages");
}

#[tokio::test]
async fn devices_timeline_receipt_leases_store_health() {
    let api = start(None).await;
    let c = ApiClient::new(&api.url, None).unwrap();
    lease(&api.bus, 1);
    let id = start_download(&api.bus, 1, 300 * 1024);
    progress(&api.bus, id, 100 * 1024);
    finish(&api.bus, id, 300 * 1024);
    api.tracker
        .wait_for(&mac(1), PhoneState::Burning, WAIT)
        .await
        .unwrap();

    let (list, seq) = c.devices().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(seq > 0, "the list carries its feed position");
    let d = &list[0];
    assert_eq!(d.mac.as_deref(), Some("00:90:8f:00:00:01"));
    assert_eq!(d.state, PhoneState::Burning);
    assert_eq!(d.firmware.as_deref(), Some("3.4.6.604"));
    assert_eq!(
        d.target_firmware.as_deref(),
        Some("3.4.8.198"),
        "the store's newest image for the model"
    );
    assert!(d.update_pending);

    // Any MAC spelling names the device.
    let detail: DeviceDetail = c.get_json("/api/v1/devices/00908F000001").await.unwrap();
    assert!(
        detail
            .timeline
            .iter()
            .any(|e| e.source == "dhcp" && e.text.contains("DHCPACK"))
    );
    assert!(
        detail
            .timeline
            .iter()
            .any(|e| e.source == "http" && e.kind == "transfer_finished")
    );
    assert!(
        detail
            .timeline
            .iter()
            .any(|e| e.state == Some(PhoneState::Burning))
    );

    let (status, _, body) = c
        .get_raw("/api/v1/devices/00:11:22:33:44:55")
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("GET /api/v1/devices"));
    let (status, _, _) = c.get_raw("/api/v1/devices?state=bogus").await.unwrap();
    assert_eq!(status, 400);
    let burning: Vec<DeviceView> = c
        .get_json("/api/v1/devices?state=burning,failed")
        .await
        .unwrap();
    assert_eq!(burning.len(), 1);
    let none: Vec<DeviceView> = c
        .get_json("/api/v1/devices?state=provisioned")
        .await
        .unwrap();
    assert!(none.is_empty());

    // Back from the burn, then the config: provisioned, with a receipt.
    lease(&api.bus, 1);
    config(&api.bus, 1);
    api.tracker
        .wait_for(&mac(1), PhoneState::Provisioned, WAIT)
        .await
        .unwrap();
    let r: Receipt = c
        .get_json("/api/v1/devices/00-90-8f-00-00-01/receipt")
        .await
        .unwrap();
    assert!(r.provisioned);
    assert_eq!(r.firmware_before.as_deref(), Some("3.4.6.604"));
    assert_eq!(r.firmware_after.as_deref(), Some("3.4.8.198"));
    assert_eq!(r.policy.as_deref(), Some("audiocodes"));
    assert_eq!(r.files.len(), 2);
    assert_eq!(r.files[0].sha256, "ab".repeat(32));
    assert_eq!(r.files[0].bytes, 300 * 1024);
    assert!(r.time_to_provisioned_ms.is_some());

    let leases: serde_json::Value = c.get_json("/api/v1/leases").await.unwrap();
    assert_eq!(leases[0]["ip"], "127.77.0.10");
    let store: serde_json::Value = c.get_json("/api/v1/store").await.unwrap();
    assert_eq!(store["files"].as_array().unwrap().len(), 3);
    assert_eq!(store["newest"][0]["version"], "3.4.8.198");
    let health: serde_json::Value = c.get_json("/healthz").await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["devices"], 1);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let api = start(None).await;
    let c = ApiClient::new(&api.url, None).unwrap();
    lease(&api.bus, 2);
    // A real progress handle, as the protocol servers use: it counts transfers and bytes.
    let entry = api.store.lookup(IMG).unwrap();
    let mut t = provbox_protocols::progress::Transfer::start(
        &api.bus,
        provbox_protocols::progress::TransferStart {
            proto: provbox_protocols::Proto::Tftp,
            peer: format!("{}:4000", ip(2)).parse().unwrap(),
            path: "450HD.img",
            entry: &entry,
            offset: 0,
            size: entry.size,
            user_agent: None,
            tftp: None,
        },
    );
    t.progress(entry.size);
    t.finish();
    api.tracker
        .wait_for(&mac(2), PhoneState::Burning, WAIT)
        .await
        .unwrap();
    let (status, headers, body) = c.get_raw("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains("provbox_phones{state=\"burning\"} 1"),
        "{text}"
    );
    assert!(text.contains("provbox_phones{state=\"provisioned\"} 0"));
    assert!(text.contains("provbox_leases 1"));
    assert!(
        text.contains("provbox_transfers_total{proto=\"tftp\",result=\"finished\"}"),
        "{text}"
    );
    assert!(text.contains("provbox_bytes_served_total{proto=\"tftp\"}"));
}

#[tokio::test]
async fn a_token_guards_the_api_but_not_health_or_the_page() {
    let api = start(Some("s3cret+token")).await;
    let anon = ApiClient::new(&api.url, None).unwrap();
    for path in [
        "/api/v1/devices",
        "/api/v1/events",
        "/api/v1/leases",
        "/api/v1/store",
        "/metrics",
        "/api/v1/devices/x/receipt",
    ] {
        let (status, headers, _) = anon.get_raw(path).await.unwrap();
        assert_eq!(status, 401, "{path}");
        assert!(headers.contains_key("www-authenticate"));
    }
    let wrong = ApiClient::new(&api.url, Some("s3cret+tokeN")).unwrap();
    assert_eq!(wrong.get_raw("/api/v1/devices").await.unwrap().0, 401);
    let good = ApiClient::new(&api.url, Some("s3cret+token")).unwrap();
    assert_eq!(good.get_raw("/api/v1/devices").await.unwrap().0, 200);
    // EventSource cannot send headers: the query parameter works too (percent-encoded).
    assert_eq!(
        anon.get_raw("/api/v1/leases?token=s3cret%2Btoken")
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(anon.get_raw("/healthz").await.unwrap().0, 200);
    let (status, headers, body) = anon.get_raw("/").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(String::from_utf8_lossy(&body).contains("<script src=\"/app.js\""));
    assert_eq!(anon.get_raw("/app.js").await.unwrap().0, 200);
    assert_eq!(anon.get_raw("/style.css").await.unwrap().0, 200);
}

#[tokio::test]
async fn serving_beyond_loopback_needs_a_token() {
    let api = start(None).await;
    let state = provbox::api::ApiState {
        tracker: api.tracker.clone(),
        bus: api.bus.clone(),
        store: api.store.clone(),
        leases: std::sync::Arc::new(|| serde_json::json!([])),
        token: None,
        metrics: prometheus(),
    };
    // Binding only; no traffic goes anywhere.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = provbox::api::serve(listener, state, api.stop.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("token"), "{err}");
}

#[tokio::test]
async fn sse_streams_and_resumes_with_last_event_id() {
    let api = start(None).await;
    let c = ApiClient::new(&api.url, None).unwrap();
    let mut s = c.events("/api/v1/events", None).await.unwrap();
    lease(&api.bus, 3);
    let ack = until(&mut s, |m| m.event == "wire" && m.data.contains("DhcpAck")).await;
    let leased = until(&mut s, |m| {
        m.event == "state" && m.data.contains("\"to\":\"leased\"")
    })
    .await;
    let row = until(&mut s, |m| m.event == "device").await;
    let row: DeviceView = serde_json::from_str(&row.data).unwrap();
    assert_eq!(row.key, mac(3));
    let last: u64 = leased.id.unwrap().parse().unwrap();
    assert!(
        last > ack.id.unwrap().parse::<u64>().unwrap(),
        "ids increase"
    );
    drop(s);

    // While nobody listens, the phone starts downloading.
    let id = start_download(&api.bus, 3, 1_000_000);
    progress(&api.bus, id, 500_000);
    api.tracker
        .wait_for(&mac(3), PhoneState::FirmwareDownload, WAIT)
        .await
        .unwrap();

    // Resume: exactly what came after `last`, in order, first of all the rest of the
    // DHCP exchange's items, then the transfer.
    let mut s = c.events("/api/v1/events", Some(last)).await.unwrap();
    let first = next(&mut s).await;
    assert_eq!(
        first.id.as_deref().unwrap().parse::<u64>().unwrap(),
        last + 1
    );
    let started = until(&mut s, |m| {
        m.event == "wire" && m.data.contains("TransferStarted")
    })
    .await;
    let dl = until(&mut s, |m| {
        m.event == "state" && m.data.contains("firmware_download")
    })
    .await;
    assert!(dl.id.unwrap().parse::<u64>().unwrap() > started.id.unwrap().parse::<u64>().unwrap());
    // And then it is live.
    finish(&api.bus, id, 1_000_000);
    until(&mut s, |m| {
        m.event == "state" && m.data.contains("\"to\":\"burning\"")
    })
    .await;

    // `?since=` and a type filter: only device rows.
    let mut s = c
        .events(&format!("/api/v1/events?types=device&since={last}"), None)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(next(&mut s).await.event, "device");
    }
    // An id from the future (say, the journal was deleted) asks the client to reload.
    let mut s = c.events("/api/v1/events", Some(10_000_000)).await.unwrap();
    assert_eq!(next(&mut s).await.event, "reset");
}

#[tokio::test]
async fn the_devices_and_report_commands() {
    let api = start(None).await;
    lease(&api.bus, 4);
    let id = start_download(&api.bus, 4, 300 * 1024);
    finish(&api.bus, id, 300 * 1024);
    lease(&api.bus, 4);
    config(&api.bus, 4);
    lease(&api.bus, 5);
    let id = start_download(&api.bus, 5, 1_000_000);
    progress(&api.bus, id, 600_000);
    api.bus
        .publish(provbox_protocols::EventKind::TransferAborted {
            id,
            bytes: 600_000,
            reason: "connection reset".into(),
            duration_ms: 9,
        });
    api.tracker
        .wait_for(&mac(4), PhoneState::Provisioned, WAIT)
        .await
        .unwrap();
    api.tracker
        .wait_for(&mac(5), PhoneState::Failed, WAIT)
        .await
        .unwrap();

    provbox::client::devices(&api.url, None, true)
        .await
        .unwrap();
    provbox::client::devices(&api.url, None, false)
        .await
        .unwrap();
    let (list, _) = ApiClient::new(&api.url, None)
        .unwrap()
        .devices()
        .await
        .unwrap();
    let table = provbox::client::render_table(&list, 240);
    assert!(table.starts_with("PHONE"));
    assert!(table.contains("00:90:8f:00:00:04") && table.contains("provisioned"));
    assert!(table.contains("connection reset"), "{table}");

    let out = api.dir.path().join("junit.xml");
    let sum = provbox::client::report_junit(&api.url, None, &out)
        .await
        .unwrap();
    assert_eq!((sum.phones, sum.failures), (2, 1));
    let xml = std::fs::read_to_string(&out).unwrap();
    assert!(xml.contains("<testsuites name=\"provbox\" tests=\"2\" failures=\"1\""));
    assert!(xml.contains("name=\"00:90:8f:00:00:04\""));
    assert!(xml.contains("<failure type=\"failed\" message=\"failed: firmware download of 450HD_3.4.8.198.img aborted"), "{xml}");
    assert!(xml.contains("<property name=\"firmware_after\" value=\"3.4.8.198\"/>"));

    // An unreachable API is an error that says what to check.
    let err = provbox::client::devices("http://127.0.0.1:9", None, false)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("provbox serve"), "{err:#}");
}

/// A person's look at `provbox watch`: run in a terminal with
/// `cargo test -p provbox-tests --test api_http watch_by_eye -- --ignored --nocapture`;
/// a small fleet moves for 15 s while the live view draws it.
#[tokio::test]
#[ignore = "interactive: for looking at the terminal view"]
async fn watch_by_eye() {
    let api = start(None).await;
    let bus = api.bus.clone();
    tokio::spawn(async move {
        let size = 20_000_000u64;
        let ids: Vec<u64> = (1..=5u8)
            .map(|i| {
                lease(&bus, i);
                start_download(&bus, i, size)
            })
            .collect();
        for step in 1..=30u64 {
            for (n, id) in ids.iter().enumerate() {
                let pct = (step * (n as u64 + 2) * 2).min(100);
                if pct < 100 {
                    progress(&bus, *id, size * pct / 100);
                } else if step == 30 || pct == 100 {
                    finish(&bus, *id, size);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        provbox::client::watch(&api.url, None),
    )
    .await;
}
