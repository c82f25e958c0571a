//! Body types of the proxy: one boxed type for everything it sends, and a wrapper that
//! enforces the idle timeout between chunks and reports how many bytes went through when the
//! body ends (for the access log and metrics).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A body with nothing in it. Its box allocates nothing (the body is zero-sized), so it
/// also serves as a stand-in while a response's real body is being wrapped.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// No chunk arrived within the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body idle for longer than {0:?}")]
pub struct IdleTimeout(pub Duration);

/// Wraps a body: fails it after `idle` without a frame, counts bytes, and calls `on_end`
/// exactly once with the byte count when the body finishes, fails or is dropped.
pub struct MeteredBody<B: Body, F: FnOnce(u64, bool)> {
    inner: B,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    bytes: u64,
    on_end: Option<F>,
}

impl<B: Body, F: FnOnce(u64, bool)> MeteredBody<B, F> {
    pub fn new(inner: B, idle: Duration, on_end: F) -> Self {
        MeteredBody {
            inner,
            idle,
            timer: None,
            bytes: 0,
            on_end: Some(on_end),
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes, complete);
        }
    }
}

impl<B, F> Body for MeteredBody<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    F: FnOnce(u64, bool) + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer = None;
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                // hyper stops polling once a body says it has ended; report completion now.
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.finish(false);
                        Poll::Ready(Some(Err(Box::new(IdleTimeout(idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, F: FnOnce(u64, bool)> Drop for MeteredBody<B, F> {
    fn drop(&mut self) {
        // Dropped before the end means the client went away mid-body.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

/// A client's request body: none (our own HTTP/1.1 server codec takes only requests without
/// one, `server_h1.rs`), or hyper's (HTTP/2, and HTTP/1.1 requests that carry a body).
///
/// hyper's is boxed: that keeps a request under 256 bytes, which the request's dozen moves
/// through the handler's futures copy with about half the instructions of a larger one
/// (glibc's memcpy takes its loop above 256 bytes), while requests with a body through
/// hyper already allocate far more than this box.
pub enum RequestBody {
    Empty,
    Hyper(Box<hyper::body::Incoming>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Hyper(incoming) => Pin::new(&mut **incoming).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Hyper(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Hyper(incoming) => incoming.size_hint(),
        }
    }
}
