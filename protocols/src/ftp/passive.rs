//! Passive data ports: the configured range, handed out round-robin.
//!
//! libunftp's own choice (without a pooled listener, which needs its `listen` and so
//! cannot report an ephemeral control port) tries 9 random ports and gives up; a busy
//! small range then answers `425`. This binder walks the whole range from a shared
//! cursor, and listens before returning so two sessions can never both bind one port
//! with `SO_REUSEADDR` and have the second fail at `listen`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpSocket;

/// Backlog of a passive listener; one client connects to it.
const BACKLOG: i32 = 16;

#[derive(Debug, Clone)]
pub(crate) struct PassivePorts {
    first: u16,
    last: u16,
    cursor: Arc<AtomicUsize>,
}

impl PassivePorts {
    pub(crate) fn new(range: provbox_config::PortRange) -> PassivePorts {
        PassivePorts {
            first: range.first,
            last: range.last,
            cursor: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn range(&self) -> RangeInclusive<u16> {
        self.first..=self.last
    }

    fn bind_listening(ip: IpAddr, port: u16) -> io::Result<Socket> {
        let addr = SocketAddr::new(ip, port);
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // Data connections the server closed linger in TIME_WAIT on this port.
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(BACKLOG)?;
        Ok(s)
    }
}

#[async_trait]
impl libunftp::options::Binder for PassivePorts {
    async fn bind(
        &mut self,
        local_ip: IpAddr,
        _ports: RangeInclusive<u16>,
    ) -> io::Result<TcpSocket> {
        let n = usize::from(self.last - self.first) + 1;
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut last_err = None;
        for i in 0..n {
            // `n` ≤ 65536, so the offset fits a u16.
            let port = self.first + ((start + i) % n) as u16;
            match Self::bind_listening(local_ip, port) {
                // libunftp calls `listen` again on it; on a listening socket that only
                // resets the backlog.
                Ok(s) => return Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(s))),
                Err(e) => last_err = Some(e),
            }
        }
        metrics::counter!("provbox_ftp_passive_exhausted_total").increment(1);
        crate::warn_limited!(
            range = %format!("{}-{}", self.first, self.last),
            "ftp: every passive port is busy; widen ftp.passive_ports"
        );
        Err(last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use libunftp::options::Binder;

    #[tokio::test]
    async fn never_hands_out_a_port_in_use() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let probe = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        let mut b = PassivePorts::new(provbox_config::PortRange {
            first: port,
            last: port,
        });
        // Someone else listens on the only port: refused, not shared.
        assert!(b.bind(ip, b.range()).await.is_err());
        drop(probe);
        let held = b.bind(ip, b.range()).await.unwrap();
        assert_eq!(held.local_addr().unwrap().port(), port);
        // We hold it now: the next session must not get it too.
        assert!(b.bind(ip, b.range()).await.is_err());
    }
}
