//! The test-fixture API, as another project's Rust tests use it (docs/fixture.md).
//!
//! Put files in a store directory, start the appliance on loopback, point a device at
//! `app.addrs()`, wait for the device to reach a state, inspect what it was served,
//! shut down. Two examples: simulated phones that take DHCP leases (the whole journey),
//! and any HTTP client of your own that identifies itself by its User-Agent (no DHCP).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use provbox::Appliance;
use provbox::sim::{Family, Fleet, ImageSpec, SimTarget};
use provbox::tracker::PhoneState;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Simulated phones: DHCP (relay mode on loopback, no root), firmware upgrade over
/// HTTPS, config; the test waits on the tracker and reads the phone's receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_phones_provision() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&store)?;

    // 1. Files: a (synthetic) image for the model and one config per phone. Your
    //    project would write its own generated configs here.
    ImageSpec {
        model: "450HD".into(),
        version: "3.4.8.198".into(),
        date: "20260101".into(),
        size: 256 * 1024,
        corrupt: false,
    }
    .write_file(&store.join("450HD_3.4.8.198.img"))?;
    let macs = ["00:90:8f:f1:00:01", "00:90:8f:f1:00:02"];
    for mac in macs {
        let bare = mac.replace(':', "").to_uppercase();
        std::fs::write(
            store.join(format!("{bare}.cfg")),
            "system/type=450HD\nvoip/line/0/enabled=1\n",
        )?;
    }

    // 2. The appliance: every server on 127.0.0.1 with an ephemeral port, DHCP in relay
    //    mode with a pool in 127.77.0.0/16. `configure` changes anything else; here the
    //    option 160 every phone gets (placeholders are filled with the bound ports).
    let app = Appliance::builder()
        .store(&store)
        .state(&state)
        .loopback()
        .configure(|c| {
            c.dhcp.provisioning_url =
                Some("https://{server}:{https_port}/450HD.img;<MAC>.cfg".into());
            c.store.settle = provbox_config::Duration::from_millis(100);
        })
        .start()
        .await?;
    let addrs = app.addrs().clone();

    // 3. The devices: here simulated phones, relaying DHCP from 127.77.0.1 and
    //    verifying HTTPS against the appliance's generated certificate.
    let mut target = SimTarget::relay(addrs.dhcp.expect("DHCP runs"), "127.77.0.1".parse()?);
    target.tftp_port = addrs.tftp.map_or(69, |a| a.port());
    target.ca = Some(state.join("tls/cert.pem"));
    let first: provbox_config::MacAddr = macs[0].parse().map_err(anyhow::Error::msg)?;
    let fleet = Fleet::generate(macs.len(), &["450HD"], Family::Uc, first).configure(|p| {
        p.timings.burn = Duration::from_millis(200);
        p.timings.reboot = Duration::from_millis(100);
    });
    let run = tokio::spawn(fleet.run(target, None));

    // 4. Wait on the appliance's side: returns as soon as the phone has reached the
    //    state (now or earlier); on timeout the error says where the phone is instead.
    for mac in macs {
        let row = app
            .wait_for(mac, PhoneState::Provisioned, Duration::from_secs(30))
            .await?;
        assert_eq!(row.model.as_deref(), Some("450HD"));
    }
    let report = run.await??;
    assert!(report.all_provisioned(), "{}", report.table());

    // 5. Inspect: the receipt lists every file served, with its hash and result.
    let receipt = app.tracker().receipt(macs[0]).expect("known phone");
    assert_eq!(receipt.firmware_after.as_deref(), Some("3.4.8.198"));
    assert!(receipt.files.iter().any(|f| f.file.ends_with(".cfg")));

    // 6. Shut down: listeners close at once, transfers in flight get the grace period.
    app.shutdown().await;
    Ok(())
}

/// Your own client, no DHCP: a request whose User-Agent carries the MAC (as AudioCodes
/// 2.x phones send it) is tied to that phone; a config delivered in full is
/// `provisioned`. The event bus shows the transfer with the served file's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_http_client_is_tracked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store)?;
    let cfg = b"system/type=440HD\nvoip/line/0/enabled=1\n";
    std::fs::write(store.join("00908f0000aa.cfg"), cfg)?;

    // No `.state(…)`: a loopback fixture keeps its state in a temporary directory.
    let app = Appliance::builder()
        .store(&store)
        .loopback()
        .start()
        .await?;
    // Subscribe before the device acts, so no event is missed.
    let mut events = app.bus().subscribe();

    let http = app.addrs().http.expect("HTTP runs");
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(
        b"GET /00908f0000aa.cfg HTTP/1.1\r\nHost: provbox\r\n\
          User-Agent: AUDC-IPPhone/2.2.8.61 (440HD; 00908F0000AA)\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    assert!(
        resp.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    assert!(resp.ends_with(cfg));

    let row = app
        .wait_for(
            "00-90-8F-00-00-AA",
            PhoneState::Provisioned,
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(row.model.as_deref(), Some("440HD"));
    assert_eq!(row.firmware.as_deref(), Some("2.2.8.61"));

    // The bus: TransferFinished carries the SHA-256 of the file that was served.
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(cfg));
    let finished = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ev = events.recv().await.expect("bus open");
            if let provbox_protocols::events::EventKind::TransferFinished { sha256, .. } = &ev.kind
            {
                break sha256.clone();
            }
        }
    })
    .await?;
    assert_eq!(finished, want);
    app.shutdown().await;
    Ok(())
}

/// inotify instances this process holds.
fn inotify_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().contains("inotify"))
        .count()
}

/// A test suite that starts an appliance per test on one runtime: `shutdown` gives
/// back the listeners and the store's watcher, so the hundredth start works like the
/// first (the kernel allows 128 inotify instances per user by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_listeners_and_the_watcher() -> anyhow::Result<()> {
    let base = inotify_fds();
    for _ in 0..3 {
        let dir = tempfile::tempdir()?;
        let app = Appliance::builder()
            .store(dir.path().join("store"))
            .state(dir.path().join("state"))
            .loopback()
            .start()
            .await?;
        let http = app.addrs().http.expect("HTTP runs");
        assert!(inotify_fds() > base, "the store watches its directory");
        tokio::net::TcpStream::connect(http).await?;
        app.shutdown().await;
        assert!(
            tokio::net::TcpStream::connect(http).await.is_err(),
            "{http} still accepts after shutdown"
        );
        let start = std::time::Instant::now();
        while inotify_fds() != base {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the store's watcher outlived the appliance"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Fixtures that name no state directory each get their own temporary one, removed
/// after shutdown: the default `./state` would share leases and the journal between
/// tests, so one test's phones would reappear in the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_fixtures_without_a_state_dir_share_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("00908f0000bb.cfg"), b"system/type=450HD\n")?;
    let ua = "AUDC-IPPhone/2.2.8.61 (450HD; 00908F0000BB)";
    let mut seen = Vec::new();
    for round in 0..2 {
        let app = Appliance::builder()
            .store(dir.path())
            .loopback()
            .start()
            .await?;
        let state = app.state_dir().to_path_buf();
        assert!(state.is_absolute() && state.is_dir(), "{}", state.display());
        assert!(
            !state.starts_with(std::env::current_dir()?),
            "{}",
            state.display()
        );
        assert!(
            app.tracker().device("00908F0000BB").is_none(),
            "round {round}: the phone came back from an earlier fixture's journal"
        );
        let http = app.addrs().http.expect("HTTP runs");
        let mut s = tokio::net::TcpStream::connect(http).await?;
        s.write_all(
            format!("GET /00908f0000bb.cfg HTTP/1.1\r\nHost: p\r\nUser-Agent: {ua}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        s.read_to_end(&mut Vec::new()).await?;
        app.wait_for(
            "00908F0000BB",
            PhoneState::Provisioned,
            Duration::from_secs(10),
        )
        .await?;
        app.shutdown().await;
        assert!(
            !state.exists(),
            "{} outlived the appliance",
            state.display()
        );
        seen.push(state);
    }
    assert_ne!(seen[0], seen[1]);
    Ok(())
}

/// A GET with a phone's User-Agent (the phone then exists for the tracker).
async fn fetch_as(http: std::net::SocketAddr, mac: &str) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(
        format!(
            "GET /{mac}.cfg HTTP/1.1\r\nHost: p\r\nUser-Agent: AUDC-IPPhone/2.2.8.61 (450HD; {mac})\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    s.read_to_end(&mut Vec::new()).await?;
    Ok(())
}

/// Forgetting a device (fixture call and `DELETE /api/v1/devices/{key}`) drops its row
/// at once and for good: the journal replayed after a restart agrees. Others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_device_stays_forgotten_across_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, state) = (dir.path().join("store"), dir.path().join("state"));
    std::fs::create_dir_all(&store)?;
    for mac in ["00908F0000D1", "00908F0000D2", "00908F0000D3"] {
        std::fs::write(store.join(format!("{mac}.cfg")), b"system/type=450HD\n")?;
    }
    let start = || {
        Appliance::builder()
            .store(&store)
            .state(&state)
            .loopback()
            .start()
    };
    let app = start().await?;
    let http = app.addrs().http.expect("HTTP runs");
    for mac in ["00908F0000D1", "00908F0000D2", "00908F0000D3"] {
        fetch_as(http, mac).await?;
        app.wait_for(mac, PhoneState::Provisioned, Duration::from_secs(10))
            .await?;
    }
    // The fixture call, with another spelling of the MAC.
    assert!(app.forget("00-90-8f-00-00-d1").await);
    assert!(app.tracker().device("00908F0000D1").is_none());
    assert!(!app.forget("00:90:8f:00:00:d1").await, "already forgotten");
    // The API.
    let api = app.addrs().api.expect("API runs");
    let delete = |key: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(api).await?;
        s.write_all(
            format!(
                "DELETE /api/v1/devices/{key} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let mut r = Vec::new();
        s.read_to_end(&mut r).await?;
        anyhow::Ok(String::from_utf8_lossy(&r).into_owned())
    };
    let r = delete("00:90:8f:00:00:d2").await?;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    let r = delete("00:90:8f:00:00:99").await?;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(app.tracker().device("00908F0000D2").is_none());
    app.shutdown().await;

    let app = start().await?;
    let t = app.tracker();
    assert!(t.device("00908F0000D1").is_none() && t.device("00908F0000D2").is_none());
    assert!(
        t.device("00908F0000D3").is_some(),
        "only the forgotten ones are gone"
    );
    // A forgotten phone that comes back starts a new row.
    fetch_as(app.addrs().http.expect("HTTP runs"), "00908F0000D1").await?;
    app.wait_for(
        "00908F0000D1",
        PhoneState::Provisioned,
        Duration::from_secs(10),
    )
    .await?;
    app.shutdown().await;
    Ok(())
}
