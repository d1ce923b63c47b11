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
use std::task::{Context, Poll};

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
        let slice = mapped::lookup(buf)?;
        Some(loop {
            match self.inner.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
            match self
                .inner
                .try_io(Interest::WRITABLE, || slice.send(&self.inner))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => break Poll::Ready(r),
            }
        })
    }
}

impl std::os::fd::AsRawFd for SendfileStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.as_raw_fd()
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
        // (`bufs[0]` was just found unmapped.)
        let end = bufs[1..]
            .iter()
            .position(|b| mapped::is_mapped(b))
            .map_or(bufs.len(), |p| p + 1);
        Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..end])
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
