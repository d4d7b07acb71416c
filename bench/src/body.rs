//! One response body type for the reference proxy and the upstream: the upstream's
//! streamed body passed through untouched, or a fixed one (possibly empty).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};

/// A response body: streamed from the upstream, or fixed.
#[derive(Debug)]
pub enum ReplyBody {
    Upstream(Incoming),
    /// Taken on the first poll; `None` once sent (or for an empty body).
    Fixed(Option<Bytes>),
}

impl ReplyBody {
    pub fn fixed(bytes: &'static [u8]) -> Self {
        Self::Fixed(Some(Bytes::from_static(bytes)))
    }

    pub fn empty() -> Self {
        Self::Fixed(None)
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream(body) => Pin::new(body).poll_frame(cx),
            Self::Fixed(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(body) => body.is_end_stream(),
            Self::Fixed(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(body) => body.size_hint(),
            Self::Fixed(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
