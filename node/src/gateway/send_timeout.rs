//! The client send timeout (`--client-send-timeout-ms`, nginx's `send_timeout`): a client
//! connection whose writes have waited that long without the client taking a byte fails with
//! `TimedOut`, and whoever serves it (our HTTP/1.1 codec, hyper's HTTP/1.1 and HTTP/2, an
//! upgraded WebSocket) closes it. Without it, a client that stops reading holds its
//! connection, the request's upstream connection and its concurrency places for ever.
//!
//! [`SendTimeout`] wraps the accepted TCP stream, under TLS when there is TLS, so every
//! protocol served on it gets the same bound. A write that completes at once, the common
//! case, touches no timer: the timer is made the first time a write has to wait, armed when
//! one starts waiting, and re-armed by progress, so the bound is on a stall, not on a whole
//! response.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A client stream whose writes may wait at most `timeout` without progress.
pub struct SendTimeout<I> {
    io: I,
    timeout: Duration,
    /// Made the first time a write waits; kept for the connection's later waits.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer's deadline belongs to the current wait: set when a write starts waiting,
    /// cleared when one makes progress.
    armed: bool,
}

impl<I> SendTimeout<I> {
    pub fn new(io: I, timeout: Duration) -> Self {
        SendTimeout {
            io,
            timeout,
            timer: None,
            armed: false,
        }
    }

    /// Called when a write returned Pending: starts the wait's clock if this is its first
    /// Pending, and fails once the clock has run out.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.armed {
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let fired = self
            .timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if fired {
            tracing::debug!(
                "closing a client connection: it took no response bytes within the send timeout"
            );
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no response bytes within the send timeout",
            ));
        }
        Poll::Pending
    }

    /// The outcome of one write-side poll of the inner stream, with the timeout applied.
    fn bound<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => self.waiting(cx).map(Err),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.bound(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.bound(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.bound(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.bound(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A write the peer never drains fails with TimedOut after the timeout; one the peer
    /// drains in time goes through however long the whole transfer takes.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_after_the_timeout_and_a_slow_one_does_not() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut ours = SendTimeout::new(ours, Duration::from_secs(10));
        let big = vec![7u8; 64 * 1024];

        // The peer reads 512 bytes every 5 s: each wait is shorter than the timeout, the
        // whole transfer far longer.
        let slow_reader = async {
            let mut got = 0;
            let mut buf = [0u8; 512];
            while got < 8 * 1024 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                got += theirs.read(&mut buf).await.unwrap();
            }
            theirs
        };
        let (written, mut theirs) = tokio::time::timeout(Duration::from_secs(600), async {
            tokio::join!(ours.write_all(&big[..8 * 1024]), slow_reader)
        })
        .await
        .expect("the slow client to have read 8 KiB within 600 s");
        written.expect("a slow but moving client is not cut off");

        // Now the peer stops reading: the write fails once the timeout has passed.
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(60), ours.write_all(&big))
            .await
            .expect("the stalled write to fail within 60 s")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
        let mut rest = Vec::new();
        drop(ours);
        theirs.read_to_end(&mut rest).await.unwrap();
        assert!(rest.len() < big.len());
    }
}
