//! Live TCP link figures for HTTP and HTTPS downloads: the kernel's smoothed round trip
//! and retransmission count (`TCP_INFO`), so a download's progress shows a slow or
//! lossy link the way a TFTP transfer's does.
//!
//! [`Probed`] wraps a connection's stream and, as bytes go out, samples `TCP_INFO` at
//! most every [`SAMPLE_EVERY`] into a [`LinkStats`] the connection's transfers read
//! when they report progress. The stream owns the socket, so sampling can never read
//! a closed or reused descriptor. The `getsockopt` call is hand-written: neither nix
//! nor socket2 exposes `TCP_INFO`.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often a busy connection's figures are refreshed (progress events go out at
/// most every 250 ms).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// `rtt_us` before the first sample.
const UNSET: u64 = u64::MAX;

/// The latest figures of one TCP connection.
#[derive(Debug)]
pub struct LinkStats {
    rtt_us: AtomicU64,
    retransmits: AtomicU64,
}

impl Default for LinkStats {
    fn default() -> Self {
        LinkStats {
            rtt_us: AtomicU64::new(UNSET),
            retransmits: AtomicU64::new(0),
        }
    }
}

impl LinkStats {
    /// The kernel's smoothed round-trip time, once sampled.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            UNSET => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Segments the kernel has sent again on this connection so far.
    pub fn retransmits(&self) -> u64 {
        self.retransmits.load(Ordering::Relaxed)
    }

    fn sample(&self, fd: RawFd) {
        if let Some((rtt_us, retrans)) = tcp_info(fd) {
            self.rtt_us.store(u64::from(rtt_us), Ordering::Relaxed);
            self.retransmits
                .store(u64::from(retrans), Ordering::Relaxed);
        }
    }
}

/// `tcpi_rtt` and `tcpi_total_retrans` of a TCP socket.
#[allow(unsafe_code)]
fn tcp_info(fd: RawFd) -> Option<(u32, u32)> {
    // SAFETY: `info` is a plain C struct, valid when zeroed; the kernel writes at most
    // `len` bytes into it and reports how many in `len`. `fd` is owned by the caller's
    // live stream.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((info.tcpi_rtt, info.tcpi_total_retrans))
}

/// A stream that keeps its connection's [`LinkStats`] fresh as it writes.
#[derive(Debug)]
pub struct Probed<S> {
    inner: S,
    stats: Arc<LinkStats>,
    next_sample: Instant,
}

impl<S: AsRawFd> Probed<S> {
    pub fn new(inner: S, stats: Arc<LinkStats>) -> Self {
        Probed {
            inner,
            stats,
            next_sample: Instant::now(),
        }
    }

    fn wrote(&mut self, r: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r
            && *n > 0
        {
            let now = Instant::now();
            if now >= self.next_sample {
                self.next_sample = now + SAMPLE_EVERY;
                self.stats.sample(self.inner.as_raw_fd());
            }
        }
    }
}

impl<S: AsRawFd> AsRawFd for Probed<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Probed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + AsRawFd + Unpin> AsyncWrite for Probed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real loopback connection: after a write the kernel's round trip is known.
    #[tokio::test]
    async fn a_write_samples_the_round_trip() -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let c = tokio::net::TcpStream::connect(l.local_addr()?).await?;
        let (mut s, _) = l.accept().await?;
        let stats = Arc::new(LinkStats::default());
        assert_eq!(stats.rtt(), None);
        let mut p = Probed::new(c, stats.clone());
        p.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await?;
        let rtt = stats.rtt();
        assert!(rtt.is_some_and(|r| r < Duration::from_secs(1)), "{rtt:?}");
        assert_eq!(stats.retransmits(), 0);
        Ok(())
    }
}
