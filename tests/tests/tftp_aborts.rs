//! How TFTP transfers end early, and what the server does about repeats: a client
//! ERROR (a phone's header probe, a PXE ROM's tsize probe) ends the transfer at once
//! and is recorded as an abort; duplicate ACKs never send anything; a repeated request
//! gets the first packet again, not a second transfer; a killed client and a server
//! shutdown are recorded with their reasons.
//!
//! Absence of retransmissions is checked after the abort event: by then the
//! transfer has ended, anything it sent before is already queued on our socket and
//! drained, so the bounded wait that follows can only see a packet a broken server
//! sends after an ERROR.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tftp_common;

use std::time::Duration;

use provbox_protocols::events::EventKind;
use provbox_protocols::tftp::packet::{ErrorCode, Mode, Options, Packet, Request, TftpOption};
use provbox_protocols::tftp::{ClientOptions, fetch};
use tftp_common::*;
use tokio::process::Command;

fn rrq(name: &str, options: Vec<TftpOption>) -> Packet<'static> {
    Packet::Rrq(Request {
        filename: name.to_string(),
        mode: Mode::Octet,
        options,
    })
}

fn error(code: ErrorCode, message: &str) -> Packet<'static> {
    Packet::Error {
        code,
        message: message.to_string(),
    }
}

/// Datagrams already queued on the raw socket.
fn drain_socket(raw: &Raw) -> usize {
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    while raw.sock.try_recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

async fn header_probe(single_port: bool) {
    let img = random_bytes(100_000, 10);
    // A 1 s timeout: a server that ignored the ERROR would retransmit within the 2 s watch.
    let fx = start(&[("450HD.img", &img)], |c| {
        c.single_port = single_port;
        c.timeout = provbox_config::Duration::from_secs(1);
    })
    .await;
    let mut ev = fx.events();
    let raw = Raw::new(fx.addr).await;
    raw.send_to(&rrq("450HD.img", vec![]), fx.addr).await;
    let (d, tid) = raw.expect().await;
    assert!(matches!(
        Packet::decode(&d),
        Ok(Packet::Data { block: 1, .. })
    ));
    assert_eq!(tid == fx.addr, single_port);
    raw.send_to(&Packet::Ack(1), tid).await;
    let (d, _) = raw.expect().await;
    assert!(matches!(
        Packet::decode(&d),
        Ok(Packet::Data { block: 2, .. })
    ));
    raw.send_to(&error(ErrorCode::NotDefined, "header probe done"), tid)
        .await;
    let ab = wait_for(&mut ev, "TransferAborted", |k| {
        matches!(k, EventKind::TransferAborted { .. })
    })
    .await;
    let EventKind::TransferAborted { bytes, reason, .. } = ab else {
        unreachable!()
    };
    assert!(
        reason.contains("client sent ERROR 0") && reason.contains("header probe done"),
        "{reason}"
    );
    assert_eq!(bytes, 512, "acknowledged bytes, not bytes sent");
    drain_socket(&raw);
    assert_eq!(
        raw.recv(Duration::from_secs(2)).await,
        None,
        "the server kept sending after the client's ERROR"
    );

    // The same with the library client's header-probe mode.
    let r = fetch(
        fx.addr,
        "450HD.img",
        ClientOptions {
            blksize: Some(1024),
            stop_after_blocks: Some(2),
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert!(!r.complete);
    assert_eq!(r.data.unwrap(), &img[..2048]);
    let ab = wait_for(&mut ev, "TransferAborted", |k| {
        matches!(k, EventKind::TransferAborted { .. })
    })
    .await;
    assert!(
        matches!(&ab, EventKind::TransferAborted { reason, .. } if reason.contains("header probe")),
        "{ab:?}"
    );
    assert!(
        drain(&mut ev)
            .iter()
            .all(|k| !matches!(k, EventKind::TransferFinished { .. }))
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_probe_error_ends_the_transfer_at_once() {
    header_probe(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_probe_error_ends_the_transfer_at_once_in_single_port_mode() {
    header_probe(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pxe_tsize_probe_then_the_real_request() {
    let img = random_bytes(300_001, 11);
    let fx = start(&[("boot/pxelinux.0", &img)], |c| {
        c.timeout = provbox_config::Duration::from_secs(1)
    })
    .await;
    let mut ev = fx.events();
    let raw = Raw::new(fx.addr).await;
    let asks = vec![
        TftpOption::new("tsize", 0),
        TftpOption::new("blksize", 1468),
    ];
    raw.send_to(&rrq("boot/pxelinux.0", asks), fx.addr).await;
    let (d, tid) = raw.expect().await;
    let Ok(Packet::Oack(pairs)) = Packet::decode(&d) else {
        panic!("{d:?}")
    };
    assert_eq!(
        Options::from_pairs(&pairs),
        Options {
            tsize: Some(300_001),
            blksize: Some(1468),
            ..Default::default()
        }
    );
    raw.send_to(&error(ErrorCode::OptionRefused, "tsize only"), tid)
        .await;
    let ab = wait_for(&mut ev, "TransferAborted", |k| {
        matches!(k, EventKind::TransferAborted { .. })
    })
    .await;
    let EventKind::TransferAborted { bytes, reason, .. } = ab else {
        unreachable!()
    };
    assert!(reason.contains("ERROR 8"), "{reason}");
    assert_eq!(bytes, 0);
    drain_socket(&raw);
    assert_eq!(
        raw.recv(Duration::from_secs(2)).await,
        None,
        "the OACK was retransmitted after ERROR 8"
    );

    // The real request, from the same address and port, as PXE ROMs do.
    raw.send_to(
        &rrq("boot/pxelinux.0", vec![TftpOption::new("blksize", 1468)]),
        fx.addr,
    )
    .await;
    let (d, tid) = raw.expect().await;
    assert!(matches!(Packet::decode(&d), Ok(Packet::Oack(_))), "{d:?}");
    raw.send_to(&Packet::Ack(0), tid).await;
    let mut got = Vec::new();
    let mut expect: u16 = 1;
    loop {
        let (d, from) = raw.expect().await;
        assert_eq!(from, tid);
        let Ok(Packet::Data { block, data }) = Packet::decode(&d) else {
            panic!("{d:?}")
        };
        if block == expect {
            got.extend_from_slice(data);
            expect = expect.wrapping_add(1);
        }
        raw.send_to(&Packet::Ack(block), tid).await;
        if block == expect.wrapping_sub(1) && data.len() < 1468 {
            break;
        }
    }
    assert_eq!(sha256(&got), sha256(&img));
    wait_for(&mut ev, "TransferFinished", |k| {
        matches!(k, EventKind::TransferFinished { .. })
    })
    .await;
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_acks_never_send_a_window_again() {
    let img = random_bytes(512 * 14 + 100, 12);
    // Timers far away: whatever arrives below is a reaction to our ACKs alone.
    let fx = start(&[("a.img", &img)], |c| {
        c.timeout = provbox_config::Duration::from_secs(10);
        c.min_timeout = provbox_config::Duration::from_secs(10);
    })
    .await;
    let raw = Raw::new(fx.addr).await;
    raw.send_to(
        &rrq("a.img", vec![TftpOption::new("windowsize", 4)]),
        fx.addr,
    )
    .await;
    let (d, tid) = raw.expect().await;
    assert!(matches!(Packet::decode(&d), Ok(Packet::Oack(_))));
    let blocks = |want: Vec<u16>| {
        let raw = &raw;
        async move {
            for w in want {
                let (d, _) = raw.expect().await;
                let Ok(Packet::Data { block, .. }) = Packet::decode(&d) else {
                    panic!("{d:?}")
                };
                assert_eq!(block, w);
            }
            assert_eq!(
                raw.recv(Duration::from_millis(500)).await,
                None,
                "more DATA than one window"
            );
        }
    };
    // A duplicate ACK of the OACK.
    raw.send_to(&Packet::Ack(0), tid).await;
    raw.send_to(&Packet::Ack(0), tid).await;
    blocks(vec![1, 2, 3, 4]).await;
    // The window's ACK, three times: one new window.
    for _ in 0..3 {
        raw.send_to(&Packet::Ack(4), tid).await;
    }
    blocks(vec![5, 6, 7, 8]).await;
    // A stale ACK and an ACK for a block never sent: nothing.
    raw.send_to(&Packet::Ack(2), tid).await;
    raw.send_to(&Packet::Ack(40), tid).await;
    assert_eq!(raw.recv(Duration::from_millis(500)).await, None);
    // An ACK inside the window (block 7 lost): the next window starts after 6 (RFC 7440).
    raw.send_to(&Packet::Ack(6), tid).await;
    blocks(vec![7, 8, 9, 10]).await;
    raw.send_to(&Packet::Ack(10), tid).await;
    raw.send_to(&Packet::Ack(10), tid).await;
    blocks(vec![11, 12, 13, 14]).await;
    raw.send_to(&Packet::Ack(14), tid).await;
    blocks(vec![15]).await;
    let mut ev = fx.events();
    raw.send_to(&Packet::Ack(15), tid).await;
    let fin = wait_for(&mut ev, "TransferFinished", |k| {
        matches!(k, EventKind::TransferFinished { .. })
    })
    .await;
    // Blocks 7 and 8 went twice, at the client's request; nothing else did.
    assert!(
        matches!(fin, EventKind::TransferFinished { retransmits: 2, .. }),
        "{fin:?}"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_gets_one_transfer() {
    let img = random_bytes(3000, 13);
    let fx = start(&[("a.img", &img)], |c| {
        c.timeout = provbox_config::Duration::from_secs(10);
        c.min_timeout = provbox_config::Duration::from_secs(10);
    })
    .await;
    let mut ev = fx.events();
    let raw = Raw::new(fx.addr).await;
    let req = rrq("a.img", vec![TftpOption::new("blksize", 1024)]);
    raw.send_to(&req, fx.addr).await;
    let (d1, tid1) = raw.expect().await;
    raw.send_to(&req, fx.addr).await;
    let (d2, tid2) = raw.expect().await;
    assert_eq!(
        (tid1, &d1),
        (tid2, &d2),
        "the repeat is answered by the same transfer"
    );
    for b in 0..3u16 {
        raw.send_to(&Packet::Ack(b), tid1).await;
        let (d, _) = raw.expect().await;
        assert!(matches!(Packet::decode(&d), Ok(Packet::Data { block, .. }) if block == b + 1));
    }
    raw.send_to(&Packet::Ack(3), tid1).await;
    wait_for(&mut ev, "TransferFinished", |k| {
        matches!(k, EventKind::TransferFinished { .. })
    })
    .await;
    // A second transfer, had there been one, would be ended (and recorded) by the shutdown.
    fx.stop().await;
    let later = drain(&mut ev);
    assert!(
        later.iter().all(|k| !matches!(
            k,
            EventKind::TransferStarted { .. } | EventKind::TransferAborted { .. }
        )),
        "a second transfer was started: {later:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_is_recorded_as_aborted() {
    let img = random_bytes(20 << 20, 14);
    let fx = start(&[("big.img", &img)], |_| {}).await;
    let mut ev = fx.events();
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "100", "-o", "/dev/null"])
        .arg(fx.url("big.img"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pr = wait_for(
        &mut ev,
        "TransferProgress",
        |k| matches!(k, EventKind::TransferProgress { bytes, .. } if *bytes > 0),
    )
    .await;
    // Progress carries the link's live round trip (loopback: well under a second).
    let EventKind::TransferProgress { rtt_us, .. } = pr else {
        unreachable!()
    };
    assert!(rtt_us.is_some_and(|r| r < 1_000_000), "rtt_us {rtt_us:?}");
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let ab = wait_for(&mut ev, "TransferAborted", |k| {
        matches!(k, EventKind::TransferAborted { .. })
    })
    .await;
    let EventKind::TransferAborted { bytes, reason, .. } = ab else {
        unreachable!()
    };
    assert!(reason.contains("port is closed"), "{reason}");
    assert!(bytes > 0 && bytes < img.len() as u64);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_transfer_and_tells_the_client() {
    let img = random_bytes(10_000, 15);
    let fx = start(&[("a.img", &img)], |c| {
        c.timeout = provbox_config::Duration::from_secs(10)
    })
    .await;
    let mut ev = fx.events();
    let raw = Raw::new(fx.addr).await;
    raw.send_to(&rrq("a.img", vec![]), fx.addr).await;
    let (_, tid) = raw.expect().await;
    raw.send_to(&Packet::Ack(1), tid).await;
    wait_for(&mut ev, "TransferStarted", |k| {
        matches!(k, EventKind::TransferStarted { .. })
    })
    .await;
    fx.stop().await;
    let ab = wait_for(&mut ev, "TransferAborted", |k| {
        matches!(k, EventKind::TransferAborted { .. })
    })
    .await;
    assert!(
        matches!(&ab, EventKind::TransferAborted { reason, .. } if reason.contains("shutting down")),
        "{ab:?}"
    );
    // DATA 2 (and perhaps a retransmission of it), then the ERROR.
    let mut saw_error = false;
    while let Some((d, _)) = raw.recv(Duration::from_secs(5)).await {
        if let Ok(Packet::Error {
            code: ErrorCode::NotDefined,
            message,
        }) = Packet::decode(&d)
        {
            assert!(message.contains("shutting down"));
            saw_error = true;
            break;
        }
    }
    assert!(saw_error, "the client was not told about the shutdown");
}

/// `[tftp] max_transfers`: with one slot taken, a second client's request gets ERROR 0
/// "server busy" and a refusal event; once the first transfer ends, the slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_transfers_refuses_the_next_client_until_a_slot_frees() {
    let img = random_bytes(100_000, 11);
    let fx = start(&[("450HD.img", &img)], |c| c.max_transfers = 1).await;
    let mut ev = fx.events();
    let first = Raw::new(fx.addr).await;
    first.send_to(&rrq("450HD.img", vec![]), fx.addr).await;
    let (d, tid) = first.expect().await;
    assert!(matches!(
        Packet::decode(&d),
        Ok(Packet::Data { block: 1, .. })
    ));

    let second = Raw::new(fx.addr).await;
    second.send_to(&rrq("450HD.img", vec![]), fx.addr).await;
    let (d, _) = second.expect().await;
    match Packet::decode(&d) {
        Ok(Packet::Error { code, message }) => {
            assert_eq!(code, ErrorCode::NotDefined);
            assert!(message.contains("busy"), "{message}");
        }
        other => panic!("expected ERROR server busy, got {other:?}"),
    }
    let refused = wait_for(&mut ev, "TransferRefused", |k| {
        matches!(k, EventKind::TransferRefused { .. })
    })
    .await;
    let EventKind::TransferRefused { reason, peer, .. } = refused else {
        unreachable!()
    };
    assert_eq!(peer, second.sock.local_addr().unwrap());
    assert!(reason.contains("max_transfers (1)"), "{reason}");

    // The first client gives up; its slot frees and the second is served.
    first
        .send_to(&error(ErrorCode::NotDefined, "done"), tid)
        .await;
    wait_for(&mut ev, "TransferAborted", |k| {
        matches!(k, EventKind::TransferAborted { .. })
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        second.send_to(&rrq("450HD.img", vec![]), fx.addr).await;
        let (d, _) = second.expect().await;
        if matches!(Packet::decode(&d), Ok(Packet::Data { block: 1, .. })) {
            break;
        }
        // The aborted transfer's task may not have left the table yet.
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
