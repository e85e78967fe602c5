//! HTTP client helpers: a pooled client ([`Http`], HTTP/1.1 or h2c), a
//! single-connection client, request builders, and [`Resp`], a response
//! read whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{empty, full, ReqBody, WAIT};

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-backend` header of a fake backend's answer.
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }

    /// The `x-switchyard-error` header.
    pub fn reason(&self) -> Option<&str> {
        self.header("x-switchyard-error")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// A pooled keep-alive client (hyper-util legacy).
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, ReqBody>,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 with prior knowledge (h2c).
    pub fn h2c() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// Sends and returns the head with a streaming body (bounded wait for the head).
    pub async fn send_streaming(
        &self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, String> {
        self.send_streaming_within(req, WAIT).await
    }

    /// Like `send_streaming`, waiting up to `limit` for the head.
    pub async fn send_streaming_within(
        &self,
        req: Request<ReqBody>,
        limit: Duration,
    ) -> Result<Response<Incoming>, String> {
        match tokio::time::timeout(limit, self.client.request(req)).await {
            Err(_) => Err("no response head within the time limit".into()),
            Ok(Err(e)) => Err(format!("request failed: {e:?}")),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Sends and reads the whole response (bounded).
    pub async fn send(&self, req: Request<ReqBody>) -> Result<Resp, String> {
        let resp = self.send_streaming(req).await?;
        let (parts, body) = resp.into_parts();
        let body = match tokio::time::timeout(WAIT, body.collect()).await {
            Err(_) => return Err("response body did not end within the time limit".into()),
            Ok(Err(e)) => return Err(format!("response body failed: {e}")),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn try_get(&self, addr: SocketAddr, path: &str) -> Result<Resp, String> {
        self.send(request(Method::GET, addr, path).body(empty()).unwrap())
            .await
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Resp {
        self.try_get(addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
    }

    pub async fn get_host(&self, addr: SocketAddr, host: &str, path: &str) -> Resp {
        let req = request(Method::GET, addr, path)
            .header("host", host)
            .body(empty())
            .unwrap();
        self.send(req)
            .await
            .unwrap_or_else(|e| panic!("GET {path} (Host: {host}): {e}"))
    }

    pub async fn post(&self, addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Resp {
        let req = request(Method::POST, addr, path)
            .body(full(body.into()))
            .unwrap();
        self.send(req)
            .await
            .unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e}"))
    }
}

/// A request builder for `http://ADDR/PATH`.
pub fn request(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
}

/// A request builder in origin form (`/PATH` plus a Host header), for
/// single connections made with [`h1_connection`] or hyper's conn API.
pub fn origin_request(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
}

/// One GET with a fresh client.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    Http::new().get(addr, path).await
}

/// One HTTP/1.1 connection (no pool, no transparent reconnects): a request
/// failing on it shows that the connection was dropped.
pub async fn h1_connection(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<ReqBody>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Counts occurrences of each string.
pub fn tally<S: AsRef<str>>(items: &[S]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item.as_ref().to_string()).or_insert(0) += 1;
    }
    counts
}

/// Who answered each of `n` GETs to `/{service}/r{i}` (`None`: not a fake
/// backend's answer, e.g. a 503).
pub async fn answers(proxy: SocketAddr, service: &str, n: usize) -> Vec<Option<String>> {
    let http = Http::new();
    let mut who = Vec::with_capacity(n);
    for i in 0..n {
        let resp = http.get(proxy, &format!("/{service}/r{i}")).await;
        who.push(resp.backend().map(str::to_string));
    }
    who
}

/// Who answered each of `n` GETs to `path`: the fake backend's name, or
/// `status NNN` for an answer from none.
pub async fn answer_labels(http: &Http, proxy: SocketAddr, path: &str, n: usize) -> Vec<String> {
    let mut who = Vec::with_capacity(n);
    for _ in 0..n {
        let resp = http.get(proxy, path).await;
        who.push(match resp.backend() {
            Some(name) => name.to_owned(),
            None => format!("status {}", resp.status),
        });
    }
    who
}
