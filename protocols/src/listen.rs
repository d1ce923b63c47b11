//! TCP listeners with an accept queue sized for a fleet that powers on at once.
//!
//! `TcpListener::bind` asks the kernel for a backlog of 1024. When a rack of phones
//! reboots together, SYNs beyond the queue are answered with SYN cookies, and if the
//! accept queue is still full when the client's ACK arrives, that ACK is dropped: the
//! client believes it is connected while the server never sees the connection, so a
//! phone waits out its whole read timeout for an FTP greeting or an HTTP response
//! (`TcpExtListenOverflows` in `nstat`). nginx and vsftpd make the backlog a setting
//! for the same reason; here it is as large as the kernel allows (`somaxconn` caps it).

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The accept queue asked for; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 65_535;

/// Binds and listens on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, as tokio does).
pub fn tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_backlog_is_as_large_as_the_kernel_allows() {
        let l = tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // For a listening socket, `ss` shows the backlog in the Send-Q column.
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let send_q: u32 = text.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(send_q, somaxconn.min(BACKLOG), "{text}");
    }
}
