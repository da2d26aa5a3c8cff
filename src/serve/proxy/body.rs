//! The response body the proxy sends: the instance's body streamed frame by frame under the
//! request's deadline (Cloud Run's request timeout also bounds streaming responses), or a
//! short body of the proxy's own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::serve::proxy::upstream::Checkout;
use crate::serve::router::Slot;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request timeout expired while the response was still streaming.
#[derive(Debug, thiserror::Error)]
#[error("the request timeout expired while the response was streaming")]
pub struct DeadlineExceeded;

pub enum ProxyBody {
    /// Streamed from the instance until it ends or the deadline passes.
    Upstream {
        inner: Incoming,
        deadline: Pin<Box<Sleep>>,
        /// Keeps the instance counted busy until the body is done or dropped.
        _slot: Box<dyn Slot>,
        /// The client connection's instance connection, given back when the body is done.
        _connection: Option<Checkout>,
    },
    /// A complete body made by the proxy (an error page, or nothing).
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn text(text: std::borrow::Cow<'static, str>) -> Self {
        let bytes = match text {
            std::borrow::Cow::Borrowed(s) => Bytes::from_static(s.as_bytes()),
            std::borrow::Cow::Owned(s) => Bytes::from(s),
        };
        ProxyBody::Full(Some(bytes))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                inner, deadline, ..
            } => {
                if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
                    return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
                }
                match deadline.as_mut().poll(cx) {
                    // Failing the body makes hyper cut the connection, which is what a client
                    // of Cloud Run sees when a stream outlives the request timeout.
                    Poll::Ready(()) => Poll::Ready(Some(Err(DeadlineExceeded.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// The request body sent to the instance, cut off past the HTTP/1 limit (32 MiB). When the
/// limit is passed, what is left of the client's body is set aside rather than dropped, so the
/// proxy can read and discard it while its 413 goes out: closing the connection at once makes
/// many clients report a broken pipe instead of the 413.
pub struct CappedBody {
    inner: Option<Incoming>,
    remaining: u64,
    overflow: Overflow,
}

/// Where a [`CappedBody`] leaves the unread rest of the client's body.
pub type Overflow = Arc<Mutex<Option<Incoming>>>;

/// Reading the client's request body failed (a malformed chunk, a client that went away
/// mid-body): the client's fault, never the instance's.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body failed: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// The request body passed the limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the limit")]
pub struct BodyTooLarge;

impl CappedBody {
    pub fn new(inner: Incoming, limit: u64) -> (Self, Overflow) {
        let overflow = Overflow::default();
        let body = CappedBody {
            inner: Some(inner),
            remaining: limit,
            overflow: overflow.clone(),
        };
        (body, overflow)
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Some(Err(BodyTooLarge.into())));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.remaining {
                    *this.overflow.lock().unwrap_or_else(|e| e.into_inner()) = this.inner.take();
                    return Poll::Ready(Some(Err(BodyTooLarge.into())));
                }
                this.remaining -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError(e).into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

/// Reads and discards the rest of a refused body for a short while, so the client can finish
/// sending and read the refusal; then the connection is closed.
pub async fn drain(mut body: Incoming, limit: std::time::Duration) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}
