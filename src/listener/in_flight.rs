//! Counting the requests in flight on a client connection, for any hyper
//! service: a request counts from the call of the service until its response
//! body ends or is dropped (an [`InFlight`] guard rides in the future, then in
//! the body). That is what "idle" means to the connection task: no request is
//! waiting for its response or still sending it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::Service;

use super::clock::{ConnClock, InFlight};

/// A service whose requests are counted on their connection's clock.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    clock: Arc<ConnClock>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, clock: Arc<ConnClock>) -> Counted<S> {
        Counted { inner, clock }
    }
}

impl<S, R, B> Service<Request<R>> for Counted<S>
where
    S: Service<Request<R>, Response = Response<B>>,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, req: Request<R>) -> Self::Future {
        let guard = InFlight::start(&self.clock);
        CountedFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future, holding the request's guard until the response.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| CountedBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's guard until it is dropped
    /// (hyper drops it at its end, or when the client goes away).
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InFlight>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;

    #[derive(Clone)]
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Response<Full<bytes::Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn call(&self, _req: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(Full::new(bytes::Bytes::from("hi")))))
        }
    }

    #[tokio::test]
    async fn a_request_counts_until_its_body_is_gone() {
        let clock = ConnClock::new();
        let service = Counted::new(Echo, Arc::clone(&clock));
        let future = service.call(Request::new(()));
        assert_eq!(clock.in_flight(), 1);
        let response = future.await.unwrap_or_else(|e| match e {});
        assert_eq!(clock.in_flight(), 1, "the body is still to be sent");
        let body = response.into_body();
        let bytes = body.collect().await.unwrap_or_else(|e| match e {});
        assert_eq!(bytes.to_bytes(), "hi");
        assert_eq!(clock.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_future_ends_its_request() {
        let clock = ConnClock::new();
        let service = Counted::new(Echo, Arc::clone(&clock));
        drop(service.call(Request::new(())));
        assert_eq!(clock.in_flight(), 0);
    }
}
