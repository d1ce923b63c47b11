//! A TCP stream whose writes of mapped store slices go out with `sendfile(2)`.
//!
//! hyper (plain HTTP) and, through the vendored libunftp's data channel, FTP write
//! response bodies as `Bytes` slices of a snapshot. For a large blob those slices lie
//! inside a read-only memory map of the blob file, and `write(2)` would copy them
//! into socket buffers. [`SendfileStream`] asks the store whether a slice is mapped
//! ([`provbox_storage::mapped::send_mapped`]) and, if so, sends it from the file with
//! no copy; everything else (headers, small files) is written as usual. Same bytes,
//! same partial-write semantics, so the protocol libraries need no change: hyper only
//! sees `poll_write_vectored` report how much went out.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use provbox_storage::mapped;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A plain TCP stream that sends mapped store slices with `sendfile`.
#[derive(Debug)]
pub struct SendfileStream {
    inner: TcpStream,
}

impl SendfileStream {
    pub fn new(inner: TcpStream) -> Self {
        SendfileStream { inner }
    }

    /// One `sendfile` of a mapped slice, waiting for the socket to be writable;
    /// `None` when the slice is not mapped.
    fn poll_send_mapped(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        if !mapped::is_mapped(buf) {
            return None;
        }
        Some(loop {
            if let Err(e) = ready_or_pending(self.inner.poll_write_ready(cx)) {
                break e;
            }
            let r = self.inner.try_io(Interest::WRITABLE, || {
                // Unmapped in between is impossible while `buf` is borrowed (the
                // mapping lives as long as any slice of it); treat it as a plain
                // short write of nothing rather than trusting that.
                mapped::send_mapped(&self.inner, buf)
                    .unwrap_or_else(|| Err(io::Error::other("store mapping vanished")))
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => break Poll::Ready(r),
            }
        })
    }
}

/// `Ok(())` when ready, `Err(poll)` with the poll to return otherwise.
fn ready_or_pending(p: Poll<io::Result<()>>) -> Result<(), Poll<io::Result<usize>>> {
    match p {
        Poll::Ready(Ok(())) => Ok(()),
        Poll::Ready(Err(e)) => Err(Poll::Ready(Err(e))),
        Poll::Pending => Err(Poll::Pending),
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(p) = self.poll_send_mapped(cx, buf) {
            return p;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let bufs = &bufs[first..];
        if let Some(p) = self.poll_send_mapped(cx, &bufs[0]) {
            return p;
        }
        // Copy-write the leading unmapped buffers (a response head, small bodies) in
        // one `writev`, stopping before a mapped one so it is not copied.
        let end = bufs
            .iter()
            .position(|b| mapped::is_mapped(b))
            .unwrap_or(bufs.len());
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..end]))?;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
