//! WRQ: refused unless `[tftp] upload_dir` is set (phones that push their logs).
//!
//! An upload is capped at `upload_max` bytes (announced tsize or bytes received,
//! whichever shows it first), held in memory, then stored through
//! [`crate::uploads`] (confined to `upload_dir`, written to a temporary file renamed
//! into place: a reader never sees half an upload; an existing file of that name is
//! replaced). Stored and failed uploads are events, so a phone's log upload shows on
//! its timeline.

use std::time::Duration;

use provbox_storage::resolve;

use crate::events::Proto;
use crate::uploads;

use super::netascii;
use super::packet::{self, ErrorCode, MIN_BLKSIZE, Mode, Options, Packet, ack_packet};
use super::server::{Job, Shared};
use super::transfer::{self, RecvEnd, RecvParams, Sink};

/// Longest wait for a repeated final DATA after the last ACK.
const DALLY_MAX: Duration = Duration::from_secs(2);

pub(super) async fn serve(sh: &Shared, job: Job) {
    let Job { peer, req, rx, .. } = job;
    let cfg = sh.cfg();
    let Some(area) = sh.upload_area() else {
        return sh.refuse(
            peer,
            &req.filename,
            ErrorCode::AccessViolation,
            "uploads are disabled",
            "write request refused: uploads are disabled".into(),
        );
    };
    let rel = match resolve::resolve(&req.filename.replace('\\', "/")) {
        Ok(r) => r,
        Err(reason) => {
            return sh.refuse(
                peer,
                &req.filename,
                ErrorCode::AccessViolation,
                "access violation",
                format!("upload path refused: {reason}"),
            );
        }
    };
    let asked = req.known_options();
    let max = cfg.upload_max;
    if asked.tsize.is_some_and(|t| t > max) {
        let msg = format!("upload larger than the {max}-byte limit");
        return sh.refuse(peer, &req.filename, ErrorCode::DiskFull, &msg, msg.clone());
    }
    let mut g = Options::default();
    if let Some(b) = asked.blksize {
        g.blksize = Some(b.min(cfg.max_blksize.max(MIN_BLKSIZE)));
    }
    g.timeout = asked.timeout;
    g.tsize = asked.tsize;
    if let Some(w) = asked.windowsize {
        g.windowsize = Some(w.min(cfg.max_windowsize.max(1)));
    }
    let params = RecvParams {
        blksize: g.blksize.unwrap_or(packet::DEFAULT_BLKSIZE),
        windowsize: g.windowsize.unwrap_or(1),
        timeout: g
            .timeout
            .map_or(cfg.timeout.get(), |t| Duration::from_secs(u64::from(t))),
        retries: cfg.retries,
    };
    let opening = if g.is_empty() {
        ack_packet(0).to_vec()
    } else {
        Packet::Oack(g.to_pairs()).encode()
    };
    let mut link = match sh.link(peer, rx).await {
        Ok(l) => l,
        Err(e) => {
            return sh.refuse(
                peer,
                &req.filename,
                ErrorCode::NotDefined,
                "server busy, try again",
                format!("no transfer socket: {e}"),
            );
        }
    };
    let netascii = req.mode != Mode::Octet;
    let mut decoder = netascii::Decoder::new();
    let mut data: Vec<u8> = Vec::new();
    let mut wire_bytes: u64 = 0;
    let mut sink = |block: &[u8]| {
        wire_bytes += block.len() as u64;
        if wire_bytes > max {
            return Sink::Stop(
                ErrorCode::DiskFull,
                format!("upload larger than the {max}-byte limit"),
            );
        }
        if netascii {
            decoder.decode(block, &mut data);
        } else {
            data.extend_from_slice(block);
        }
        Sink::Continue
    };
    let end = transfer::receive(
        &mut link,
        &params,
        opening,
        true,
        None,
        &mut sink,
        sh.cancel(),
    )
    .await;
    match end {
        RecvEnd::Done { last, .. } => {
            decoder.finish(&mut data);
            let stored = area
                .put(&rel, &data[..], true)
                .await
                .map_err(|e| e.to_string());
            match &stored {
                Ok(s) => {
                    tracing::info!(%peer, file = %rel, bytes = s.bytes, "TFTP upload stored");
                }
                Err(e) => {
                    tracing::error!(%peer, dir = %area.root().display(), file = %rel, error = %e, "TFTP: cannot store an upload (check [tftp] upload_dir)");
                }
            }
            uploads::publish(
                sh.bus(),
                Proto::Tftp,
                peer,
                &rel,
                None,
                stored.map(|s| s.bytes),
            );
            transfer::dally(&mut link, last, params.timeout.min(DALLY_MAX)).await;
        }
        other => {
            tracing::info!(%peer, file = %rel, end = ?other, "TFTP upload not completed");
            let reason = match other {
                RecvEnd::PeerError { code, message } => {
                    format!("the client sent ERROR {}: {message}", code.code())
                }
                RecvEnd::Stopped => format!("larger than the {max}-byte limit"),
                RecvEnd::TimedOut => "timed out waiting for the next block".to_string(),
                RecvEnd::PeerGone(e) => format!("the client went away: {e}"),
                RecvEnd::Cancelled => "the server is shutting down".to_string(),
                RecvEnd::Superseded => "a new request from the same client replaced it".to_string(),
                RecvEnd::Protocol(m) => m,
                RecvEnd::Done { .. } => String::new(),
            };
            uploads::publish(sh.bus(), Proto::Tftp, peer, &rel, None, Err(reason));
        }
    }
}
