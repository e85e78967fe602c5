//! The HTTP/2 control-frame flood guard for client connections.
//!
//! Every PING and every SETTINGS frame a client sends must be answered (an
//! ACK), so a client that sends them in bulk and never reads makes the server
//! work and write for nothing; h2 answers all of them (it holds one pending
//! answer and stops reading only once the socket's send buffer is full,
//! which on loopback is ~100,000 answers later). Envoy closes such a
//! connection once 1,000 answers are queued, NGINX at 10,000 pending frames.
//! h2 has no setting for it, so this guard walks the frame headers of the
//! bytes the client sends (payloads are skipped by counting, never read) and
//! reports a flood when answer-demanding frames outrun a token bucket: a
//! burst of [`BURST`], refilled at [`PER_SECOND`]. Keep-alive and BDP pings
//! (gRPC sends at most one at a time) stay far below it.
//!
//! Pure apart from reading the clock when the bucket runs dry; state is a
//! few integers. A connection that does not open with the HTTP/2 preface is
//! never looked at again.

use std::time::Instant;

/// Answer-demanding frames a connection may send back to back.
pub const BURST: u32 = 1_000;
/// Sustained rate allowed after the burst.
pub const PER_SECOND: u32 = 100;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `n` bytes of the preface seen.
    Preface(u8),
    /// `n` bytes of a frame header buffered.
    Header(u8),
    /// Payload bytes still to skip.
    Payload(u32),
    /// Not HTTP/2 (or already flagged): nothing more to do.
    Off,
}

#[derive(Debug)]
pub struct ControlFloodGuard {
    state: State,
    header: [u8; FRAME_HEADER],
    tokens: u32,
    refilled_at: Option<Instant>,
}

impl Default for ControlFloodGuard {
    fn default() -> Self {
        ControlFloodGuard::new()
    }
}

impl ControlFloodGuard {
    pub fn new() -> ControlFloodGuard {
        ControlFloodGuard {
            state: State::Preface(0),
            header: [0; FRAME_HEADER],
            tokens: BURST,
            refilled_at: None,
        }
    }

    /// Shown the client's bytes in order; true once the connection floods
    /// (and from then on the guard is off: the caller closes it).
    pub fn scan(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return false,
                State::Preface(n) => {
                    let n = usize::from(n);
                    let take = bytes.len().min(PREFACE.len() - n);
                    if bytes[..take] != PREFACE[n..n + take] {
                        self.state = State::Off;
                        return false;
                    }
                    bytes = &bytes[take..];
                    self.state = match n + take {
                        24 => State::Header(0),
                        seen => State::Preface(seen as u8),
                    };
                }
                State::Header(n) => {
                    let n = usize::from(n);
                    let take = bytes.len().min(FRAME_HEADER - n);
                    self.header[n..n + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if n + take < FRAME_HEADER {
                        self.state = State::Header((n + take) as u8);
                        continue;
                    }
                    if self.frame_ends_in_flood() {
                        self.state = State::Off;
                        return true;
                    }
                }
                State::Payload(left) => {
                    let skip = bytes.len().min(left as usize);
                    bytes = &bytes[skip..];
                    let left = left - skip as u32;
                    self.state = match left {
                        0 => State::Header(0),
                        left => State::Payload(left),
                    };
                }
            }
        }
        false
    }

    /// A whole frame header is buffered: account for it, move to its payload.
    fn frame_ends_in_flood(&mut self) -> bool {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        let length = u32::from_be_bytes([0, l0, l1, l2]);
        self.state = match length {
            0 => State::Header(0),
            length => State::Payload(length),
        };
        let demands_answer = matches!(kind, PING | SETTINGS) && flags & ACK == 0;
        demands_answer && !self.take_token(Instant::now)
    }

    fn take_token(&mut self, now: impl FnOnce() -> Instant) -> bool {
        if self.tokens == 0 {
            let now = now();
            let since = self.refilled_at.map_or(0, |t| {
                now.duration_since(t).as_millis() as u64 * u64::from(PER_SECOND) / 1000
            });
            if since == 0 && self.refilled_at.is_some() {
                return false;
            }
            self.tokens = since.min(u64::from(BURST)) as u32;
            self.refilled_at = Some(now);
            if self.tokens == 0 {
                return false;
            }
        } else if self.refilled_at.is_none() {
            self.refilled_at = Some(Instant::now());
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        out.extend_from_slice(payload);
        out
    }

    fn pings(n: usize, flags: u8) -> Vec<u8> {
        (0..n).flat_map(|_| frame(PING, flags, &[7; 8])).collect()
    }

    #[test]
    fn http1_is_never_looked_at() {
        let mut guard = ControlFloodGuard::new();
        assert!(!guard.scan(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!guard.scan(&pings(5_000, 0)));
    }

    #[test]
    fn a_ping_flood_is_caught_after_the_burst_whatever_the_read_sizes() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(SETTINGS, 0, &[0; 6]));
        stream.extend(frame(0x1, 0x5, &[1, 2, 3])); // HEADERS
        stream.extend(pings(BURST as usize + 10, 0));
        for chunk in [1, 7, 9, 17, 4096] {
            let mut guard = ControlFloodGuard::new();
            let caught = stream.chunks(chunk).position(|c| guard.scan(c));
            let at = caught.expect("flood caught") * chunk;
            // The preface, SETTINGS (1 token), HEADERS, then BURST - 1 pings
            // pass; the last byte of the next ping's header decides.
            let allowed = PREFACE.len() + 15 + 12 + (BURST as usize - 1) * 17;
            let decided = allowed + FRAME_HEADER - 1;
            assert!(at <= decided && decided < at + chunk, "chunk {chunk}: {at}");
        }
    }

    #[test]
    fn acks_and_other_frames_cost_nothing() {
        let mut guard = ControlFloodGuard::new();
        let mut stream = PREFACE.to_vec();
        stream.extend(pings(10_000, ACK));
        stream.extend(frame(SETTINGS, ACK, &[]));
        for _ in 0..10_000 {
            stream.extend(frame(0x8, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
            stream.extend(frame(0x0, 0, &[0; 100])); // DATA
        }
        assert!(!guard.scan(&stream));
    }

    #[test]
    fn the_bucket_refills_at_the_sustained_rate() {
        let mut guard = ControlFloodGuard::new();
        let start = Instant::now();
        guard.refilled_at = Some(start);
        guard.tokens = 0;
        assert!(!guard.take_token(|| start));
        let later = start + std::time::Duration::from_millis(100);
        for _ in 0..PER_SECOND / 10 {
            assert!(guard.take_token(|| later));
        }
        assert!(!guard.take_token(|| later));
    }
}
