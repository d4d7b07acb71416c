//! A body that fails when no frame arrives within the idle timeout: bodies may stream
//! for as long as they move.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::BoxError;

/// A body that fails when no frame arrives for `idle`: streams may last forever, but
/// may not stall forever. The timer is armed only when the body waits: a body whose
/// frames are ready when asked for (most small answers) never touches the timer wheel.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    /// Armed at the first wait; re-armed at a wait that follows progress.
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the timer was last armed.
    progressed: bool,
    /// Request bodies: signalled when the body has been sent in full (or failed).
    sent: Option<oneshot::Sender<()>>,
    /// Request bodies: trailers are dropped, so none can carry an identity header.
    drop_trailers: bool,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            sleep: None,
            progressed: false,
            sent: None,
            drop_trailers: false,
        }
    }

    /// As a request body: reports its end on `sent` and drops trailers.
    pub fn for_request(mut self, sent: oneshot::Sender<()>) -> Self
    where
        B: HttpBody,
    {
        self.sent = Some(sent);
        self.drop_trailers = true;
        if self.inner.is_end_stream() {
            self.finished();
        }
        self
    }

    fn finished(&mut self) {
        if let Some(tx) = self.sent.take() {
            let _ = tx.send(());
        }
    }

    /// Polls the idle timer, arming it (from now) when this is the first wait or a
    /// frame arrived since it was armed.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let progressed = std::mem::take(&mut self.progressed);
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if progressed {
                    sleep.as_mut().reset(Instant::now() + self.idle);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(self.idle))),
        };
        sleep.as_mut().poll(cx)
    }
}

impl<B> Drop for IdleTimeout<B> {
    /// A body hyper never polls (empty) or drops early also counts as sent.
    fn drop(&mut self) {
        self.finished();
    }
}

/// The body stalled longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the body stalled for longer than the idle timeout")]
pub struct IdleTimeoutError;

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.progressed = true;
                    if this.drop_trailers && frame.is_trailers() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finished();
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.finished();
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    return match this.poll_idle(cx) {
                        Poll::Ready(()) => {
                            this.finished();
                            Poll::Ready(Some(Err(Box::new(IdleTimeoutError))))
                        }
                        Poll::Pending => Poll::Pending,
                    };
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
