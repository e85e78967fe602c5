//! Request and response bodies for the client helpers and the fake
//! backend: the boxed body type, generated and channel-fed bodies, and a
//! byte counter.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every client helper sends.
pub type ReqBody = BoxBody<Bytes, BoxError>;

/// A body of `total` bytes made on the fly from one shared 64 KiB chunk
/// (each frame is a cheap `Bytes` slice, nothing is held whole). Byte `i` of
/// every chunk is `i % 251`.
pub struct PatternBody {
    remaining: u64,
    chunk: Bytes,
}

impl PatternBody {
    pub fn new(total: u64) -> Self {
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        PatternBody {
            remaining: total,
            chunk: Bytes::from(chunk),
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A body fed chunk by chunk through a channel; it ends when every sender
/// is dropped. Its length is unknown, so HTTP/1.1 sends it chunked.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

pub fn channel_body() -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody { rx })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

pub fn boxed<B>(body: B) -> ReqBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

pub fn full(data: impl Into<Bytes>) -> ReqBody {
    boxed(Full::new(data.into()))
}

pub fn empty() -> ReqBody {
    boxed(Empty::<Bytes>::new())
}

/// Reads a body to its end, counting bytes without keeping them.
pub async fn count_body<B>(mut body: B) -> Result<u64, String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body error after {n} bytes: {e}"))?;
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}
