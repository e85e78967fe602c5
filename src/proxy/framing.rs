//! Request-smuggling guard for HTTP/1 client connections (SPEC §4).
//!
//! A request carrying both `Content-Length` and `Transfer-Encoding` must be
//! answered 400 and its connection closed. hyper 1.x cannot be asked to: its
//! HTTP/1 server silently drops `Content-Length` in that case
//! (`proto/h1/role.rs`), so the service never sees the conflict. This module
//! owns the parsing half of the fix: a pure state machine that is shown every
//! byte the client sends, in order, before hyper is, follows HTTP/1.x message
//! framing exactly as hyper will, and in a request head that carries both
//! header lines turns the `:` of the second one into a space. httparse then
//! rejects the head, and hyper answers 400 and closes.
//!
//! The state is O(1) (a few integers): a head or chunk-size line may be split
//! across reads at any byte, and one read may hold several pipelined
//! requests. Bodies are skipped by counting and never inspected. Heads follow
//! httparse 1.10 (leading empty lines skipped, CRLF or bare LF, names
//! case-insensitive, a line ends at its first `\n`); framing follows hyper
//! 1.x (`role.rs`: last `Transfer-Encoding` line decides `chunked`, equal
//! `Content-Length`s; `decode.rs`: the chunked decoder, strict CRLF). Header
//! lines httparse finds malformed count for nothing: hyper rejects the head,
//! or with `ignore_invalid_headers` drops just that line, as we do. Where the
//! connection stops being HTTP/1 (HTTP/2 preface, an upgrade hyper performs,
//! CONNECT) or hyper fails and closes anyway, it stops for good (`is_done`)
//! and never touches a byte again.

/// Header names that matter to framing, lower case.
const NAMES: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"upgrade"];
const CL: u8 = 0;
const TE: u8 = 1;
const UPGRADE: u8 = 2;

/// `pos` after a mismatch in the method (no longer `CONNECT`).
const MISS: u8 = u8::MAX;
/// Content-Length value: leading blanks, digits, trailing blanks, invalid.
const CL_DIGITS: u8 = 1;
const CL_TRAIL: u8 = 2;
const CL_BAD: u8 = 3;
/// Transfer-Encoding value: `0..=7` = bytes of `chunked` matched in the
/// current comma-separated element, then trailing blanks, a failed element,
/// or a non-ASCII byte (hyper's `to_str` fails: never chunked, sticky).
const TE_TRAIL: u8 = 8;
const TE_FAIL: u8 = 9;
const TE_OPAQUE: u8 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a request line: httparse skips empty lines here.
    Start,
    /// `\r` before a request line; `\n` must follow.
    StartCr,
    /// In the method; `pos` = bytes matching `CONNECT`, or `MISS`.
    Method,
    /// In the request target; `pos` = 1 once it has a byte.
    Target,
    /// In the version; `pos` = bytes matched of `HTTP/1.x`.
    Version,
    /// `\r` after the version; `\n` must follow.
    VersionCr,
    /// At the start of a header line or of the empty line ending the head.
    LineStart,
    /// `\r` at the start of a line; `\n` must follow and ends the head.
    HeadCr,
    /// In a header name still matching `NAMES[name]` for `pos` bytes.
    Name,
    /// In the value of header `name`; `pos`/`acc` parse it.
    Value,
    /// The rest of a head line that does not matter.
    SkipLine,
    /// Content-Length body: bytes left.
    Body(u64),
    /// Chunked body, as hyper's `ChunkedState`: first hex digit needed.
    ChunkStart,
    /// More hex digits (`acc`), blanks, `;` or `\r`.
    ChunkSize,
    /// Blanks after the size: more blanks, `;` or `\r`.
    ChunkLws,
    /// Chunk extension up to `\r` (a bare `\n` is an error in hyper).
    ChunkExt,
    /// `\r` seen after the size line; `\n` must follow.
    ChunkLf,
    /// Chunk data: bytes left.
    ChunkData(u64),
    /// `\r\n` after chunk data.
    DataCr,
    DataLf,
    /// After the last chunk or a trailer line: `\r` ends, else a trailer.
    TrailerStart,
    /// In a trailer line, up to `\r`.
    Trailer,
    TrailerLf,
    /// Final `\n` of a chunked body.
    EndLf,
    /// Stopped inspecting for good.
    Done,
}

/// What the current head has said so far (from valid header lines only).
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    http10: bool,
    connect: bool,
    upgrade: bool,
    seen_cl: bool,
    cl: Option<u64>,
    cl_bad: bool,
    seen_te: bool,
    te_chunked: bool,
}

/// Follows the framing of the requests on one client connection; see the
/// module docs.
#[derive(Debug, Clone)]
pub struct RequestFraming {
    state: State,
    /// Index into `NAMES` in `Name` / `Value`.
    name: u8,
    /// Small per-state counter (match position or value sub-state).
    pos: u8,
    /// Content-Length value or chunk size being parsed.
    acc: u64,
    head: Head,
}

impl Default for RequestFraming {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestFraming {
    /// A connection before its first byte.
    pub fn new() -> Self {
        RequestFraming {
            state: State::Start,
            name: 0,
            pos: 0,
            acc: 0,
            head: Head::default(),
        }
    }

    /// Whether it stopped inspecting for good (HTTP/2 preface, an upgrade or
    /// CONNECT, or framing hyper rejects or it cannot follow).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether hyper takes this request for an upgrade — `CONNECT`, or an
    /// `Upgrade` line on HTTP/1.1 (`role.rs`, as [`Self::end_head`] follows
    /// it) — the head after which the guard stops for good. Unless the
    /// protocol really switches, the answer to such a request must close the
    /// connection: hyper goes on reading HTTP/1 requests that the guard no
    /// longer sees (found by reading the `framing` fuzz target's reference:
    /// `Upgrade: x` without `Connection: upgrade`, or a CONNECT answered
    /// 404, let a later Content-Length + Transfer-Encoding request through).
    pub fn stops_after(
        method: &http::Method,
        version: http::Version,
        headers: &http::HeaderMap,
    ) -> bool {
        if version > http::Version::HTTP_11 {
            return false;
        }
        if headers.contains_key(http::header::UPGRADE) {
            version == http::Version::HTTP_11
        } else {
            method == http::Method::CONNECT
        }
    }

    /// Whether every byte seen so far belongs to a complete message (or to
    /// the empty lines httparse skips between them): a reader that consumed
    /// them all holds nothing of the next request (the listener parks the
    /// connection then). False once done. The differential fuzz target
    /// (`fuzz/fuzz_targets/framing.rs`) checks message ends against httparse
    /// and hyper's rules with it.
    pub fn at_message_boundary(&self) -> bool {
        self.state == State::Start
    }

    /// Whether it is inside a request head: past the first byte of a request
    /// line and before the empty line that ends the head. The listener times
    /// `header_read_timeout` from the moment this becomes true.
    pub fn in_head(&self) -> bool {
        use State::*;
        matches!(
            self.state,
            Method | Target | Version | VersionCr | LineStart | HeadCr | Name | Value | SkipLine
        )
    }

    /// Inspect the next bytes the client sent, in order. In a request head
    /// carrying both a `Content-Length` and a `Transfer-Encoding` line, turn
    /// the `:` of the second of them into a space so that hyper rejects the
    /// head (400 + close). Returns true when it rewrote something.
    pub fn scan(&mut self, bytes: &mut [u8]) -> bool {
        let mut rewrote = false;
        let mut i = 0;
        while i < bytes.len() {
            // Bodies and uninteresting lines are skipped in bulk.
            let rest = (bytes.len() - i) as u64;
            match self.state {
                State::Done => break,
                State::Body(left) | State::ChunkData(left) => {
                    let sized = matches!(self.state, State::Body(_));
                    if left > rest {
                        self.state = if sized {
                            State::Body(left - rest)
                        } else {
                            State::ChunkData(left - rest)
                        };
                        break;
                    }
                    // left <= rest, so it fits in usize.
                    i += left as usize;
                    self.state = if sized { State::Start } else { State::DataCr };
                    continue;
                }
                State::SkipLine => {
                    match memchr::memchr(b'\n', &bytes[i..]) {
                        Some(n) => {
                            i += n + 1;
                            self.state = State::LineStart;
                        }
                        None => i = bytes.len(),
                    }
                    continue;
                }
                // The request target up to the next space or line end: its
                // bytes only mean "not empty" (`pos = 1`).
                State::Target => match memchr::memchr3(b' ', b'\r', b'\n', &bytes[i..]) {
                    Some(0) => {}
                    Some(n) => {
                        self.pos = 1;
                        i += n;
                        continue;
                    }
                    None => {
                        self.pos = 1;
                        break;
                    }
                },
                _ => {}
            }
            if self.step(bytes[i]) {
                bytes[i] = b' ';
                rewrote = true;
            }
            i += 1;
        }
        rewrote
    }

    /// One byte of a head or of chunked framing; true = rewrite it.
    fn step(&mut self, b: u8) -> bool {
        use State::*;
        let blank = b == b' ' || b == b'\t';
        self.state = match self.state {
            Start => match b {
                b'\n' => Start,
                b'\r' => StartCr,
                _ => {
                    self.head = Head::default();
                    self.state = Method;
                    self.pos = 0;
                    return self.step(b);
                }
            },
            StartCr if b == b'\n' => Start,
            Method => match b {
                b' ' => {
                    self.head.connect = self.pos == 7;
                    self.pos = 0;
                    Target
                }
                b'\r' | b'\n' => Done,
                _ => {
                    let p = usize::from(self.pos);
                    self.pos = match b"CONNECT".get(p) {
                        Some(&c) if c == b => self.pos + 1,
                        _ => MISS,
                    };
                    Method
                }
            },
            // Lenient about repeated spaces: httparse accepts less.
            Target => match b {
                b' ' if self.pos == 1 => {
                    self.pos = 0;
                    Version
                }
                b' ' => Target,
                b'\r' | b'\n' => Done,
                _ => {
                    self.pos = 1;
                    Target
                }
            },
            Version => match (self.pos, b) {
                (0, b' ') => Version,
                (0..=6, _) if b"HTTP/1.".get(usize::from(self.pos)) == Some(&b) => {
                    self.pos += 1;
                    Version
                }
                (7, b'0' | b'1') => {
                    self.head.http10 = b == b'0';
                    self.pos = 8;
                    Version
                }
                (8, b'\r') => VersionCr,
                (8, b'\n') => LineStart,
                // Not HTTP/1.x (e.g. the HTTP/2 preface): hyper's business.
                _ => Done,
            },
            VersionCr if b == b'\n' => LineStart,
            LineStart => match b {
                b'\n' => self.end_head(),
                b'\r' => HeadCr,
                _ => {
                    let lower = b.to_ascii_lowercase();
                    match NAMES.iter().position(|n| n.first() == Some(&lower)) {
                        Some(n) => {
                            self.name = n as u8;
                            self.pos = 1;
                            Name
                        }
                        None => SkipLine,
                    }
                }
            },
            HeadCr if b == b'\n' => self.end_head(),
            Name => return self.name_byte(b),
            Value => self.value_byte(b, blank),
            ChunkStart | ChunkSize if b.is_ascii_hexdigit() => {
                // The first digit starts a fresh size.
                let acc = if self.state == ChunkStart {
                    0
                } else {
                    self.acc
                };
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                match acc.checked_mul(16).and_then(|a| a.checked_add(digit)) {
                    Some(v) => {
                        self.acc = v;
                        ChunkSize
                    }
                    None => Done,
                }
            }
            ChunkSize | ChunkLws if blank => ChunkLws,
            ChunkSize | ChunkLws | ChunkExt if b == b';' => ChunkExt,
            ChunkSize | ChunkLws | ChunkExt if b == b'\r' => ChunkLf,
            ChunkExt if b != b'\n' => ChunkExt,
            ChunkLf if b == b'\n' => match self.acc {
                0 => TrailerStart,
                n => ChunkData(n),
            },
            DataCr if b == b'\r' => DataLf,
            DataLf if b == b'\n' => ChunkStart,
            TrailerStart if b == b'\r' => EndLf,
            TrailerStart | Trailer if b == b'\r' => TrailerLf,
            TrailerStart | Trailer => Trailer,
            TrailerLf if b == b'\n' => TrailerStart,
            EndLf if b == b'\n' => Start,
            // Anything else is an error for httparse or hyper's decoder:
            // hyper closes the connection, so we stop too.
            _ => Done,
        };
        false
    }

    /// A byte of a header name that so far matches `NAMES[self.name]`.
    fn name_byte(&mut self, b: u8) -> bool {
        let name: &[u8] = NAMES.get(usize::from(self.name)).copied().unwrap_or(&[]);
        let pos = usize::from(self.pos);
        if b == b':' && pos == name.len() {
            // Name complete. The other framing header already seen: this
            // line is the second; break its colon. The line then counts for
            // nothing (hyper rejects the head, or drops the line when told
            // to ignore invalid headers).
            let other = match self.name {
                CL => self.head.seen_te,
                TE => self.head.seen_cl,
                _ => false,
            };
            if other {
                self.state = State::SkipLine;
                return true;
            }
            self.pos = 0;
            self.acc = 0;
            self.state = State::Value;
        } else if b == b'\n' {
            self.state = State::LineStart;
        } else if name.get(pos) == Some(&b.to_ascii_lowercase()) {
            self.pos += 1;
        } else {
            // Another header, or not a valid header line at all.
            self.state = State::SkipLine;
        }
        false
    }

    /// A byte of the value of a header that matters.
    fn value_byte(&mut self, b: u8, blank: bool) -> State {
        if b == b'\n' {
            self.end_line();
            return State::LineStart;
        }
        // httparse refuses control bytes in values (a `\r` may only end the
        // line, where it is trimmed like a blank).
        if (b < 0x20 && !blank && b != b'\r') || b == 0x7f {
            return State::SkipLine;
        }
        let blank = blank || b == b'\r';
        self.pos = match (self.name, self.pos) {
            (CL, CL_BAD) => CL_BAD,
            (CL, 0 | CL_DIGITS) if b.is_ascii_digit() => {
                let digit = u64::from(b - b'0');
                match self.acc.checked_mul(10).and_then(|a| a.checked_add(digit)) {
                    Some(v) => {
                        self.acc = v;
                        CL_DIGITS
                    }
                    None => CL_BAD,
                }
            }
            (CL, 0) if blank => 0,
            (CL, CL_DIGITS | CL_TRAIL) if blank => CL_TRAIL,
            (CL, _) => CL_BAD,
            (TE, TE_OPAQUE) => TE_OPAQUE,
            (TE, _) if b >= 0x80 => TE_OPAQUE,
            (TE, _) if b == b',' => 0,
            (TE, 0) if blank => 0,
            (TE, p @ 0..=6) if b"chunked".get(usize::from(p)) == Some(&b.to_ascii_lowercase()) => {
                p + 1
            }
            (TE, 7 | TE_TRAIL) if blank => TE_TRAIL,
            (TE, _) => TE_FAIL,
            (_, p) => p,
        };
        State::Value
    }

    /// A valid line of a header that matters has ended: record it as hyper
    /// would.
    fn end_line(&mut self) {
        let h = &mut self.head;
        match self.name {
            CL => {
                h.seen_cl = true;
                let valid = self.pos == CL_DIGITS || self.pos == CL_TRAIL;
                match h.cl {
                    _ if !valid => h.cl_bad = true,
                    Some(prev) if prev != self.acc => h.cl_bad = true,
                    _ => h.cl = Some(self.acc),
                }
            }
            // hyper: the last Transfer-Encoding line decides.
            TE => {
                h.seen_te = true;
                h.te_chunked = self.pos == 7 || self.pos == TE_TRAIL;
            }
            UPGRADE => h.upgrade = true,
            _ => {}
        }
    }

    /// The empty line ending a head: pick the body framing as hyper does.
    fn end_head(&mut self) -> State {
        let h = self.head;
        // hyper: CONNECT upgrades; an Upgrade line makes it depend on 1.1.
        let upgrade = if h.upgrade { !h.http10 } else { h.connect };
        if upgrade {
            State::Done
        } else if h.seen_te {
            // hyper refuses TE in HTTP/1.0 and a last coding not `chunked`.
            if h.http10 || !h.te_chunked {
                State::Done
            } else {
                State::ChunkStart
            }
        } else if h.cl_bad {
            State::Done
        } else {
            match h.cl {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Start,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` cut at `cuts`: (bytes after, any rewrite reported, done).
    fn feed(input: &[u8], cuts: &[usize]) -> (Vec<u8>, bool, bool) {
        let mut buf = input.to_vec();
        let mut framing = RequestFraming::new();
        let mut rewrote = false;
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            rewrote |= framing.scan(&mut buf[start..end]);
            start = end;
        }
        (buf, rewrote, framing.is_done())
    }

    /// Same outcome whole, in 1-byte chunks, and split in two at every byte.
    fn check(input: &str, want: &[u8], done: bool) {
        let input = input.as_bytes();
        let ones: Vec<usize> = (1..input.len()).collect();
        let mut cuts = vec![vec![], ones];
        cuts.extend((0..=input.len()).map(|k| vec![k]));
        for cut in &cuts {
            let (out, rewrote, is_done) = feed(input, cut);
            let at = cut.first();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "cut {at:?}"
            );
            assert_eq!(rewrote, input != want, "cut {at:?}");
            assert_eq!(is_done, done, "cut {at:?}");
        }
    }

    fn unchanged(input: &str, done: bool) {
        check(input, input.as_bytes(), done);
    }

    /// `input` with the colon of the last `name:` turned into a space.
    fn broken(input: &str, name: &str) -> Vec<u8> {
        let mut out = input.as_bytes().to_vec();
        let at = input.rfind(name).expect("name in input") + name.len() - 1;
        assert_eq!(out[at], b':');
        out[at] = b' ';
        out
    }

    const GET: &str = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    /// A body that looks like a smuggling head; must never be touched.
    const LOOKALIKE: &str = "\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\n\
                             Transfer-Encoding: chunked\r\n\r\n";
    const CL_TE: &str = "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
                         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    const TE_CL: &str = "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                         Content-Length: 5\r\n\r\n0\r\n\r\n";

    /// GET, POST with a Content-Length body, chunked POST with extensions
    /// and trailers, GET: all bodies full of header-like text.
    fn keep_alive() -> String {
        let chunk = format!("x{LOOKALIKE}");
        format!(
            "{GET}POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{LOOKALIKE}\
             POST /c HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n\
             {:x};a=1;b=\"c d\"\r\n{chunk}\r\n005 \t;e\r\nhello\r\n\
             0;last\r\nX-Trailer: 1\r\nContent-Length: 9\r\n\r\n{GET}",
            LOOKALIKE.len(),
            chunk.len()
        )
    }

    #[test]
    fn both_orders_are_broken() {
        check(CL_TE, &broken(CL_TE, "Transfer-Encoding:"), false);
        check(TE_CL, &broken(TE_CL, "Content-Length:"), false);
        let mixed = "POST / HTTP/1.1\r\nCONTENT-length: 5\r\ntransfer-ENCODING: chunked\r\n\r\n";
        check(mixed, &broken(mixed, "transfer-ENCODING:"), false);
        // Values do not matter: the second line is broken at its name.
        let odd = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: x\r\n\r\n";
        check(odd, &broken(odd, "Content-Length:"), true);
    }

    #[test]
    fn keep_alive_sequence_untouched_then_attack_caught() {
        let seq = keep_alive();
        unchanged(&seq, false);
        for attack in [CL_TE, TE_CL] {
            let input = format!("{seq}{attack}");
            let name = if attack == CL_TE {
                "Transfer-Encoding:"
            } else {
                "Content-Length:"
            };
            check(&input, &broken(&input, name), false);
        }
    }

    #[test]
    fn bare_lf_heads() {
        let seq =
            "GET / HTTP/1.1\nHost: x\n\nPOST / HTTP/1.1\nContent-Length: 2\n\nokPUT / HTTP/1.0\n\n";
        unchanged(seq, false);
        let input = format!(
            "{seq}\n\r\nPOST / HTTP/1.1\nContent-Length: 1\ntransfer-encoding: chunked\n\n"
        );
        check(&input, &broken(&input, "transfer-encoding:"), false);
    }

    #[test]
    fn h2_preface_stops() {
        let input = format!("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{CL_TE}");
        unchanged(&input, true);
    }

    #[test]
    fn upgrade_and_connect_stop() {
        let ws = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        unchanged(&format!("{ws}{CL_TE}"), true);
        unchanged(
            &format!("{GET}CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n{CL_TE}"),
            true,
        );
        // hyper does not upgrade HTTP/1.0: keep following.
        let old = format!("GET / HTTP/1.0\r\nUpgrade: x\r\n\r\n{CL_TE}");
        check(&old, &broken(&old, "Transfer-Encoding:"), false);
        // The upgrade head itself is still checked.
        let both = "GET / HTTP/1.1\r\nUpgrade: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        check(both, &broken(both, "Transfer-Encoding:"), true);
    }

    #[test]
    fn framing_hyper_rejects_stops() {
        for head in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0 0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n",
            "GET / HTTP/1.1\r\r\n\r\n",
            "GET /\r\n\r\n",
        ] {
            unchanged(&format!("{head}{CL_TE}"), true);
        }
    }

    #[test]
    fn framing_hyper_accepts_is_followed() {
        for head in [
            // Last coding chunked, equal lengths, blanks, leading zeros.
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, CHUNKED \r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length:\t3 \r\n\r\nabc",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000000000003\r\nabc\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n\r\n\r\n",
            // Names that are not the framing headers.
            "GET / HTTP/1.1\r\nX-Content-Length: 5\r\nContent-Lengthy: 1\r\nUpgrade-Insecure-Requests: 1\r\n\
             X-Note: Content-Length: 5\r\nTransfer-Encoding-X: chunked\r\n\r\n",
        ] {
            let input = format!("{head}{CL_TE}");
            check(&input, &broken(&input, "Transfer-Encoding:"), false);
        }
    }

    #[test]
    fn trailers_end_only_at_crlf_crlf() {
        // hyper ends a trailer line only at `\r\n`, so after a bare-LF
        // trailer the next "head" is still trailer bytes to hyper.
        let input =
            format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\r\n{CL_TE}");
        unchanged(&input, true);
    }

    #[test]
    fn invalid_lines_count_for_nothing() {
        // hyper rejects these heads as they are (or drops the bad line):
        // no need to break them, and the bad line does not frame.
        unchanged(
            "POST / HTTP/1.1\r\nContent-Length : 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            false,
        );
        unchanged("POST / HTTP/1.1\r\nContent-Length: 5\x01\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false);
    }

    #[test]
    fn every_later_line_of_the_second_kind_is_broken() {
        let input = "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut want = broken(input, "Transfer-Encoding:");
        let first = input.find("Transfer-Encoding:").expect("present") + 17;
        want[first] = b' ';
        check(input, &want, false);
    }

    #[test]
    fn large_bodies_are_skipped_by_counting() {
        let mut framing = RequestFraming::new();
        let mut head = b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n".to_vec();
        assert!(!framing.scan(&mut head));
        let chunk = LOOKALIKE.repeat(100).into_bytes();
        let mut left = 1_000_000usize;
        while left > 0 {
            let n = left.min(chunk.len());
            let mut part = chunk[..n].to_vec();
            assert!(!framing.scan(&mut part));
            assert_eq!(part, chunk[..n]);
            left -= n;
        }
        let mut attack = CL_TE.as_bytes().to_vec();
        assert!(framing.scan(&mut attack));
        assert!(!framing.is_done());
    }

    #[test]
    fn in_head_spans_request_line_to_empty_line() {
        let mut framing = RequestFraming::new();
        assert!(!framing.in_head());
        framing.scan(&mut b"\r\n".to_vec());
        assert!(
            !framing.in_head(),
            "empty lines before a request are not a head"
        );
        framing.scan(&mut b"G".to_vec());
        assert!(framing.in_head());
        framing.scan(&mut b"ET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n".to_vec());
        assert!(framing.in_head());
        framing.scan(&mut b"\r\n".to_vec());
        assert!(!framing.in_head(), "the body is not part of the head");
        framing.scan(&mut b"ok".to_vec());
        assert!(!framing.in_head(), "between requests");
        framing.scan(&mut b"P".to_vec());
        assert!(framing.in_head(), "the second request's head");
    }
}
