//! A backend that is slow on every request (not per request, as the fake
//! backend's `delay_ms` is): what `p2c_ewma` must route around. Answers 200
//! with `x-backend: NAME` after its delay, which the test may change.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct SlowBackend {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl SlowBackend {
    pub async fn start(name: &str, delay: Duration) -> SlowBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let (name, counter) = (name.to_owned(), Arc::clone(&hits));
        let delay = Arc::clone(&delay_ms);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, counter) = (name.clone(), Arc::clone(&counter));
                let delay = Arc::clone(&delay);
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let name = name.clone();
                        counter.fetch_add(1, Ordering::SeqCst);
                        let delay = Duration::from_millis(delay.load(Ordering::SeqCst));
                        async move {
                            tokio::time::sleep(delay).await;
                            let mut resp = Response::new(Full::new(Bytes::from(name.clone())));
                            if let Ok(v) = http::HeaderValue::from_str(&name) {
                                resp.headers_mut().insert("x-backend", v);
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        SlowBackend {
            addr,
            hits,
            delay_ms,
            task,
        }
    }

    /// From the next request on, answer after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for SlowBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
