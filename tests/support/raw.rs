//! Raw TCP: a connection for requests hyper's client would refuse to
//! send, and a parser for the responses that come back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// A response parsed from raw bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find_crlf2(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses one response from the front of `buf`. `closed` says the peer has
/// closed, so a body without framing ends at the end of `buf`. Returns the
/// response and the bytes it used, or `None` if more bytes are needed.
pub fn parse_raw_response(buf: &[u8], closed: bool) -> Option<(RawResponse, usize)> {
    let head_end = find_crlf2(buf)?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let mut pos = head_end + 4;
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some((resp, pos));
    }
    if chunked {
        loop {
            let line_end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
            let size_text = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
            let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
            let size = usize::from_str_radix(&size_text, 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                // trailers, then an empty line
                loop {
                    let end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        return Some((resp, pos));
                    }
                }
            }
            if buf.len() < pos + size + 2 {
                return None;
            }
            resp.body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().ok()?;
        if buf.len() < pos + len {
            return None;
        }
        resp.body = buf[pos..pos + len].to_vec();
        Some((resp, pos + len))
    } else if closed {
        resp.body = buf[pos..].to_vec();
        Some((resp, buf.len()))
    } else {
        None
    }
}

/// A raw TCP connection for requests hyper's client would refuse to send.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The peer closed (EOF or reset).
    pub closed: bool,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        RawConn {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Writes bytes; a write error (the peer already closed) is returned,
    /// not fatal: the answer may still be readable.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads once, with a deadline; false when nothing more can come.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
        if self.closed {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.closed = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one whole response (bounded by `WAIT`); `None` if the
    /// connection ended or timed out first.
    pub async fn try_response(&mut self) -> Option<RawResponse> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((resp, used)) = parse_raw_response(&self.buf, self.closed) {
                self.buf.drain(..used);
                return Some(resp);
            }
            if !self.fill(deadline).await {
                if let Some((resp, used)) = parse_raw_response(&self.buf, self.closed) {
                    self.buf.drain(..used);
                    return Some(resp);
                }
                return None;
            }
        }
    }

    pub async fn response(&mut self) -> RawResponse {
        match self.try_response().await {
            Some(r) => r,
            None => panic!(
                "no complete response (closed: {}); got {:?}",
                self.closed,
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// True if the peer closes the connection within `limit` (extra bytes
    /// that arrive meanwhile are kept in the buffer).
    pub async fn closes_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.closed {
            if !self.fill(deadline).await && !self.closed {
                return false;
            }
        }
        true
    }

    /// Bytes read but not yet consumed as a response.
    pub fn leftover(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}
