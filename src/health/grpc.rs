//! The gRPC probe (`kind = "grpc"`): one unary call of the standard health
//! protocol, `grpc.health.v1.Health/Check`, over HTTP/2 — prior knowledge
//! for `h2c` services, TLS with ALPN `h2` (the service's trust roots and
//! verified name) for `https` ones. The request names `grpc_service` (empty
//! by default: the server as a whole). Only an answer with HTTP status 200,
//! `grpc-status: 0` and the serving status `SERVING` passes; `NOT_SERVING`,
//! `SERVICE_UNKNOWN`, `UNKNOWN`, any other gRPC status (such as 12
//! UNIMPLEMENTED from a server without the health service), a malformed
//! answer and a timeout all fail.
//!
//! The two messages are encoded with `prost` (already in the build for the
//! etcd client), declared here by hand rather than generated from
//! `health.proto`: two one-field messages do not justify a build script,
//! and prost's decoder handles what a hand-written one would have to get
//! right — varints, fields a newer server adds, the enum as an `int32`.
//!
//! As with the HTTP probe, the connection of a passing check is kept for the
//! next one (HTTP/2: a check is then one stream on an open connection), any
//! failure drops it, and the check timeout bounds the whole exchange; it is
//! also sent as `grpc-timeout` so the server can give up as well.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use prost::Message;

use super::transport::{self, is_stale, Http, ProbeTls};
use super::{Probe, ProbeError};

/// The path of the standard health check method.
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// A health answer is a few bytes; anything larger is not one.
const MESSAGE_CAP: usize = 16 * 1024;

type Conn = transport::Conn<Full<Bytes>>;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; `status` is the `ServingStatus`
/// enum, which protobuf encodes as an `int32`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `ServingStatus.SERVING`.
const SERVING: i32 = 1;

/// The name of a `ServingStatus` value, for logs.
pub fn serving_status_name(status: i32) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "an unknown serving status",
    }
}

/// One backend's gRPC check, with its request built once.
#[derive(Debug)]
pub struct GrpcProbe {
    uri: Uri,
    /// The length-prefixed request message.
    body: Bytes,
    timeout: Duration,
    /// `grpc-timeout`, the timeout in milliseconds (`1000m`).
    deadline: HeaderValue,
    /// The connection the last passing check left open; used by this
    /// probe's one checker, one check at a time, never across an await.
    kept: Mutex<Option<Conn>>,
    tls: Option<Box<ProbeTls>>,
}

impl GrpcProbe {
    /// A probe asking about `service` (`""`: the whole server) with
    /// `:authority` `authority` (the backend's `host:port` as declared, or
    /// the check's `host`), over TLS when `tls` is set.
    pub fn new(
        service: &str,
        authority: &str,
        timeout: Duration,
        tls: Option<ProbeTls>,
    ) -> Result<GrpcProbe, ProbeError> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let uri = Uri::try_from(format!("{scheme}://{authority}{CHECK_PATH}"))
            .map_err(ProbeError::Uri)?;
        let deadline = format!("{}m", timeout.as_millis().clamp(1, 99_999_999));
        let deadline = HeaderValue::from_str(&deadline).map_err(ProbeError::Host)?;
        Ok(GrpcProbe {
            uri,
            body: frame(&HealthCheckRequest {
                service: service.to_owned(),
            }),
            timeout,
            deadline,
            kept: Mutex::new(None),
            tls: tls.map(Box::new),
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let headers = req.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert("grpc-timeout", self.deadline.clone());
        headers.insert(USER_AGENT, HeaderValue::from_static(super::http::AGENT));
        req
    }

    fn take_kept(&self) -> Option<Conn> {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.take().filter(|c| !c.sender.is_closed())
    }

    fn keep(&self, conn: Conn) {
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
    }

    /// One check, on the kept connection when it is still good, else on a
    /// fresh one; returns the connection for the next check.
    async fn check(&self, addr: SocketAddr, kept: Option<Conn>) -> Result<Conn, ProbeError> {
        if let Some(conn) = kept {
            match self.exchange(conn).await {
                Err(ProbeError::Http(e)) if is_stale(&e) => {}
                other => return other,
            }
        }
        let conn = transport::connect(addr, self.tls.as_deref(), Http::Http2).await?;
        self.exchange(conn).await
    }

    async fn exchange(&self, mut conn: Conn) -> Result<Conn, ProbeError> {
        let resp = conn
            .sender
            .send(self.request())
            .await
            .map_err(ProbeError::Http)?;
        let (head, body) = resp.into_parts();
        if head.status != http::StatusCode::OK {
            let status = head.status.as_u16();
            return Err(ProbeError::Status {
                status,
                expected: (200, 200),
            });
        }
        // A "trailers-only" answer (an error) carries grpc-status in the head.
        if let Some(status) = grpc_status(&head.headers) {
            status?;
        }
        let (message, trailers) = read_body(body).await?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(status) => status?,
            None => return Err(ProbeError::GrpcAnswer("no grpc-status trailer")),
        }
        let answer = decode(message)?;
        match answer.status {
            SERVING => Ok(conn),
            other => Err(ProbeError::NotServing(other)),
        }
    }
}

impl Probe for GrpcProbe {
    async fn probe(&self, addr: SocketAddr) -> Result<(), ProbeError> {
        let kept = self.take_kept();
        match tokio::time::timeout(self.timeout, self.check(addr, kept)).await {
            Err(_) => Err(ProbeError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(conn)) => {
                self.keep(conn);
                Ok(())
            }
        }
    }
}

/// A message with gRPC's 5-byte prefix: uncompressed flag, big-endian length.
fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer of the right capacity cannot fail.
    let _ = message.encode(&mut out);
    out.freeze()
}

/// `grpc-status` as a result: `Ok` for 0, else the status and `grpc-message`.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), ProbeError>> {
    let code = headers.get("grpc-status")?;
    let code = code.to_str().ok().and_then(|c| c.parse::<u32>().ok());
    Some(match code {
        Some(0) => Ok(()),
        Some(code) => {
            let message = headers.get("grpc-message").and_then(|m| m.to_str().ok());
            Err(ProbeError::GrpcStatus {
                code,
                message: message.unwrap_or("").to_owned(),
            })
        }
        None => Err(ProbeError::GrpcAnswer("unreadable grpc-status")),
    })
}

/// The body's data (at most [`MESSAGE_CAP`] bytes) and its trailers.
async fn read_body(mut body: Incoming) -> Result<(BytesMut, Option<HeaderMap>), ProbeError> {
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ProbeError::Http)?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > MESSAGE_CAP {
                    return Err(ProbeError::GrpcAnswer("answer too large"));
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((data, trailers))
}

/// The one length-prefixed, uncompressed answer message.
fn decode(mut data: BytesMut) -> Result<HealthCheckResponse, ProbeError> {
    if data.len() < 5 {
        return Err(ProbeError::GrpcAnswer("no answer message"));
    }
    let compressed = data.get_u8();
    let len = usize::try_from(data.get_u32()).unwrap_or(usize::MAX);
    if compressed != 0 {
        // No grpc-accept-encoding was sent, so a server must not compress.
        return Err(ProbeError::GrpcAnswer("compressed answer"));
    }
    if len != data.len() {
        return Err(ProbeError::GrpcAnswer(
            "answer length does not match its prefix",
        ));
    }
    HealthCheckResponse::decode(data.freeze()).map_err(ProbeError::GrpcDecode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_a_framed_health_check_request() {
        let body = frame(&HealthCheckRequest {
            service: "users".into(),
        });
        // Field 1, wire type 2 (0x0a), length 5, "users".
        assert_eq!(&body[..], b"\x00\x00\x00\x00\x07\x0a\x05users");
        let empty = frame(&HealthCheckRequest::default());
        assert_eq!(&empty[..], b"\x00\x00\x00\x00\x00");
    }

    #[test]
    fn answers_decode_with_unknown_fields_skipped() {
        let answer = |bytes: &[u8]| decode(BytesMut::from(bytes)).map(|r| r.status);
        assert_eq!(answer(b"\x00\x00\x00\x00\x02\x08\x01").ok(), Some(SERVING));
        assert_eq!(answer(b"\x00\x00\x00\x00\x02\x08\x02").ok(), Some(2));
        // SERVING is the default value: proto3 may send an empty message for
        // UNKNOWN (0), never for SERVING.
        assert_eq!(answer(b"\x00\x00\x00\x00\x00").ok(), Some(0));
        // A field this probe does not know (2, a string) before the status.
        let newer = b"\x00\x00\x00\x00\x07\x12\x03abc\x08\x01";
        assert_eq!(answer(newer).ok(), Some(SERVING));
        assert!(
            answer(b"\x01\x00\x00\x00\x02\x08\x01").is_err(),
            "compressed"
        );
        assert!(answer(b"\x00\x00\x00\x00\x05\x08\x01").is_err(), "short");
        assert!(answer(b"\x00\x00").is_err(), "no prefix");
    }

    #[test]
    fn grpc_status_zero_passes_and_others_fail_with_their_message() {
        let mut headers = HeaderMap::new();
        assert!(grpc_status(&headers).is_none());
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(matches!(grpc_status(&headers), Some(Ok(()))));
        headers.insert("grpc-status", HeaderValue::from_static("12"));
        headers.insert("grpc-message", HeaderValue::from_static("unimplemented"));
        let err = grpc_status(&headers).and_then(Result::err);
        assert!(
            matches!(&err, Some(ProbeError::GrpcStatus { code: 12, message }) if message == "unimplemented"),
            "{err:?}"
        );
    }
}
