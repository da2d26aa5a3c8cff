//! The response body the proxy sends: the instance's body streamed frame by frame under the
//! request's deadline (Cloud Run's request timeout also bounds streaming responses), or a
//! short body of the proxy's own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::pool::Lease;

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
        _lease: Lease,
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
