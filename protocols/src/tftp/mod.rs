//! TFTP: the read-only server over the store (RFC 1350, 2347, 2348, 2349, 7440), a
//! small client, and the packet codec they share.
//!
//! - [`packet`]: the wire format (public: the phone simulator builds on it);
//! - `server`: [`TftpServer`]: listening, request handling, one task per transfer;
//! - `transfer`: the engine: windowed sending with an RTT-adaptive retransmission
//!   timer, and receiving (uploads, the client);
//! - `rtt`: the RFC 6298 timer; [`netascii`]: line-end translation;
//! - `upload`: WRQ into the optional upload directory;
//! - `workers`: the per-core single-threaded runtimes transfers run on;
//! - [`client`]: `fetch`, for the simulator and the tests.
//!
//! Why not async-tftp (the design card's crate): its packet types are private, and
//! its engine ignores client ERROR packets (a PXE tsize probe or a phone's header
//! probe leaves it retransmitting for minutes), serialises every open behind one
//! mutex, multiplexes all transfers on one task, and reports progress only as bytes
//! read, not acknowledged. Each of those is a requirement here.

pub mod client;
pub mod netascii;
pub mod packet;
mod rtt;
mod server;
mod transfer;
mod upload;
mod workers;

pub use client::{ClientError, ClientOptions, FetchResult, fetch};
pub use server::{ModelLookup, TftpError, TftpServer};
