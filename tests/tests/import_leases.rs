//! `provbox import-leases`: a lab switching from dnsmasq or Kea keeps its phones'
//! addresses. The real binary imports a dnsmasq lease file and a Kea memfile CSV; the
//! appliance then started on that state directory hands each phone its old address
//! in a real DHCP exchange. Importing while the appliance holds the database fails
//! with a message saying to stop it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dhcp_support;

use std::time::{SystemTime, UNIX_EPOCH};

use dhcp_support::Phone;
use dhcproto::v4::MessageType;
use provbox::Appliance;
use provbox_tests::{Scratch, import_leases as import};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_keep_their_dnsmasq_and_kea_addresses() {
    let s = Scratch::new();
    let cfg = s.state().with_file_name("lab.toml");
    std::fs::write(
        &cfg,
        format!(
            "[state]\ndir = {:?}\n[dhcp]\nserver_ip = \"127.0.0.1\"\nsubnet = \"127.77.0.0/16\"\npool = \"127.77.0.10-127.77.3.250\"\n",
            s.state()
        ),
    )
    .unwrap();
    let later = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let dnsmasq = s.state().with_file_name("dnsmasq.leases");
    std::fs::write(
        &dnsmasq,
        format!(
            "{later} 00:90:8f:aa:00:01 127.77.2.22 phone-a 01:00:90:8f:aa:00:01\n\
             {later} 00:90:8f:aa:00:09 192.0.2.9 * *\n\
             duid 00:01:00:01:2c:aa:bb:cc\n"
        ),
    )
    .unwrap();
    let kea = s.state().with_file_name("kea-leases4.csv");
    std::fs::write(
        &kea,
        format!(
            "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context,pool_id\n\
             127.77.2.33,00:90:8f:aa:00:02,,3600,{later},1,0,0,phone-b,0,,0\n"
        ),
    )
    .unwrap();

    let (code, text) = import(&cfg, "dnsmasq", &dnsmasq);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("imported 1 lease from"), "{text}");
    assert!(
        text.contains("dnsmasq.leases:2: 192.0.2.9 is outside the [dhcp] subnet 127.77.0.0/16"),
        "{text}"
    );
    let (code, text) = import(&cfg, "kea", &kea);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("127.77.2.33 00:90:8f:aa:00:02 (phone-b)"),
        "{text}"
    );

    let app = Appliance::builder()
        .store(s.store())
        .state(s.state())
        .loopback()
        .start()
        .await
        .unwrap();
    let dhcp = app.addrs().dhcp.unwrap();
    for (mac, want) in [
        ([0x00, 0x90, 0x8f, 0xaa, 0x00, 0x01], "127.77.2.22"),
        ([0x00, 0x90, 0x8f, 0xaa, 0x00, 0x02], "127.77.2.33"),
    ] {
        let mut phone = Phone::new(dhcp, mac, Some("450HD")).await;
        let ack = phone.dora().await.expect("an answer");
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr().to_string(), want, "{mac:02x?}");
    }
    // The database is the running appliance's: a second writer is refused, by name.
    let (code, text) = tokio::task::spawn_blocking(move || import(&cfg, "kea", &kea))
        .await
        .unwrap();
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("stop `provbox serve` first"), "{text}");
    app.shutdown().await;
}
