//! Formatting one [`Entry`] as a line: JSON (one object, fixed keys) or
//! NGINX's `combined` followed by Switchyard's own fields. Runs on the
//! writer thread, never on the request path.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::HeaderValue;
use http::Version;

use super::Entry;
use crate::config::AccessLogFormat;

/// Append `entry` as one line (with its `\n`) to `out`.
pub fn write(out: &mut Vec<u8>, entry: &Entry, format: AccessLogFormat) {
    match format {
        AccessLogFormat::Json => json(out, entry),
        AccessLogFormat::Combined => combined(out, entry),
    }
}

fn json(out: &mut Vec<u8>, e: &Entry) {
    // Digits are written by hand: `write!` costs more than the rest of a
    // line (the log's cost is measured per request, BENCHMARKS.md).
    out.extend_from_slice(b"{\"time\":\"");
    push_time(out, e.time);
    out.extend_from_slice(b"Z\",\"client\":\"");
    push_addr(out, e.client);
    out.extend_from_slice(b"\",\"method\":");
    json_str(out, e.method.as_str().as_bytes());
    out.extend_from_slice(b",\"host\":");
    json_opt(out, e.host.as_ref().map(HeaderValue::as_bytes));
    out.extend_from_slice(b",\"path\":");
    json_str(out, target(e).as_bytes());
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(protocol(e.version).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    push_padded(out, u64::from(e.status), 1);
    out.extend_from_slice(b",\"bytes_received\":");
    push_padded(out, e.received, 1);
    out.extend_from_slice(b",\"bytes_sent\":");
    push_padded(out, e.sent, 1);
    // Milliseconds with three decimals, from whole microseconds.
    let micros = u64::try_from(e.duration.as_micros()).unwrap_or(u64::MAX);
    out.extend_from_slice(b",\"duration_ms\":");
    push_padded(out, micros / 1000, 1);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
    out.extend_from_slice(b",\"service\":");
    json_opt(out, e.service.as_deref().map(str::as_bytes));
    out.extend_from_slice(b",\"backend\":");
    json_opt(out, e.backend.as_deref().map(str::as_bytes));
    out.extend_from_slice(b",\"attempts\":");
    push_padded(out, u64::from(e.attempts), 1);
    out.extend_from_slice(b",\"error\":");
    json_opt(out, e.error.map(str::as_bytes));
    out.extend_from_slice(b",\"user_agent\":");
    json_opt(out, e.user_agent.as_ref().map(HeaderValue::as_bytes));
    out.extend_from_slice(b",\"referer\":");
    json_opt(out, e.referer.as_ref().map(HeaderValue::as_bytes));
    out.extend_from_slice(b",\"request_id\":");
    json_str(out, e.request_id.as_bytes());
    out.extend_from_slice(b"}\n");
}

/// `YYYY-MM-DDTHH:MM:SS.mmm`; the calendar part is worked out once per
/// second (lines come in time order, so nearly every line reuses it).
fn push_time(out: &mut Vec<u8>, time: SystemTime) {
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut text) = SECOND.with(std::cell::Cell::get);
    if cached != secs {
        let t = Civil::from(time);
        let mut buf = Vec::with_capacity(19);
        push_padded(&mut buf, u64::try_from(t.year).unwrap_or(0), 4);
        buf.push(b'-');
        push_padded(&mut buf, u64::from(t.month), 2);
        buf.push(b'-');
        push_padded(&mut buf, u64::from(t.day), 2);
        buf.push(b'T');
        push_padded(&mut buf, u64::from(t.hour), 2);
        buf.push(b':');
        push_padded(&mut buf, u64::from(t.minute), 2);
        buf.push(b':');
        push_padded(&mut buf, u64::from(t.second), 2);
        if buf.len() != 19 {
            // A year past 9999: no cache, write it as it comes.
            out.extend_from_slice(&buf);
            out.push(b'.');
            push_padded(out, u64::from(since.subsec_millis()), 3);
            return;
        }
        text.copy_from_slice(&buf);
        SECOND.with(|c| c.set((secs, text)));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    push_padded(out, u64::from(since.subsec_millis()), 3);
}

/// `ip:port` as `SocketAddr`'s `Display` writes it; IPv4 by hand (nearly
/// every client), IPv6 through `core::fmt` (its zero compression).
fn push_addr(out: &mut Vec<u8>, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_padded(out, u64::from(octet), 1);
            }
            out.push(b':');
            push_padded(out, u64::from(v4.port()), 1);
        }
        // Writes into a Vec cannot fail.
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `n` in decimal, left-padded with zeros to at least `width` digits.
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in (digits.len() - at)..width {
        out.push(b'0');
    }
    out.extend_from_slice(&digits[at..]);
}

/// A JSON string; bytes that are not UTF-8 (header values may hold any
/// octet) become U+FFFD.
fn json_str(out: &mut Vec<u8>, bytes: &[u8]) {
    // Nearly every value (paths, hosts, user agents, ids) is printable
    // ASCII with nothing to escape: copied as is, no UTF-8 pass, no escaper.
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    let _ = serde_json::to_writer(&mut *out, text.as_ref());
}

fn json_opt(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => json_str(out, b),
        None => out.extend_from_slice(b"null"),
    }
}

/// `combined`: `$remote_addr - $remote_user [$time_local] "$request" $status
/// $body_bytes_sent "$http_referer" "$http_user_agent"`, then ` key="value"`
/// pairs (host, service, backend, attempts, bytes_received, duration in
/// seconds, error, request_id); `-` stands for an absent value, as in NGINX.
fn combined(out: &mut Vec<u8>, e: &Entry) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = Civil::from(e.time);
    let month = MONTHS[usize::from(t.month.clamp(1, 12)) - 1];
    let _ = write!(
        out,
        "{} - - [{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000] \"",
        e.client.ip().to_canonical(),
        t.day,
        month,
        t.year,
        t.hour,
        t.minute,
        t.second
    );
    escaped(out, e.method.as_str().as_bytes());
    out.push(b' ');
    escaped(out, target(e).as_bytes());
    let _ = write!(out, " {}\" {} {} \"", protocol(e.version), e.status, e.sent);
    quoted_body(out, e.referer.as_ref().map(HeaderValue::as_bytes));
    out.extend_from_slice(b"\" \"");
    quoted_body(out, e.user_agent.as_ref().map(HeaderValue::as_bytes));
    out.extend_from_slice(b"\" host=\"");
    quoted_body(out, e.host.as_ref().map(HeaderValue::as_bytes));
    out.extend_from_slice(b"\" service=\"");
    quoted_body(out, e.service.as_deref().map(str::as_bytes));
    out.extend_from_slice(b"\" backend=\"");
    quoted_body(out, e.backend.as_deref().map(str::as_bytes));
    let _ = write!(
        out,
        "\" attempts={} bytes_received={} duration={:.6} error=\"",
        e.attempts,
        e.received,
        e.duration.as_secs_f64()
    );
    quoted_body(out, e.error.map(str::as_bytes));
    out.extend_from_slice(b"\" request_id=\"");
    escaped(out, e.request_id.as_bytes());
    out.extend_from_slice(b"\"\n");
}

fn quoted_body(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) if !b.is_empty() => escaped(out, b),
        _ => out.push(b'-'),
    }
}

/// NGINX's escaping of logged values: `"`, `\`, control bytes and bytes
/// above 0x7e become `\xHH`, so a value can never end its field or the line.
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

/// The request target as received: path and query, or the whole URI when it
/// has none (CONNECT's authority form).
fn target(e: &Entry) -> std::borrow::Cow<'_, str> {
    match e.uri.path_and_query() {
        Some(pq) => pq.as_str().into(),
        None => e.uri.to_string().into(),
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// A UTC calendar time, to the millisecond.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    millis: u16,
}

impl From<SystemTime> for Civil {
    fn from(t: SystemTime) -> Civil {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let of_day = secs % 86_400;
        Civil {
            year,
            month,
            day,
            hour: (of_day / 3600) as u8,
            minute: (of_day / 60 % 60) as u8,
            second: (of_day % 60) as u8,
            millis: since.subsec_millis() as u16,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn calendar_matches_humantime() {
        for secs in [
            0u64,
            951_782_400,
            1_709_164_800,
            1_796_300_000,
            4_102_444_799,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(secs * 1000 + 7);
            let c = Civil::from(t);
            let ours = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
            );
            assert_eq!(ours, humantime::format_rfc3339_millis(t).to_string());
        }
    }

    #[test]
    fn timestamps_match_humantime_across_seconds() {
        for millis in [
            0u64,
            999,
            1_000,
            1_709_164_800_123,
            1_709_164_800_999,
            1_709_164_801_000,
            4_102_444_799_500,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(millis);
            let mut out = Vec::new();
            push_time(&mut out, t);
            let want = humantime::format_rfc3339_millis(t).to_string();
            assert_eq!(String::from_utf8(out).unwrap(), want.trim_end_matches('Z'));
        }
    }

    #[test]
    fn addresses_are_written_as_display_would() {
        for addr in [
            "127.0.0.1:80",
            "10.200.0.255:65535",
            "0.0.0.0:0",
            "[::1]:8080",
            "[fe80::1%2]:1",
        ] {
            let addr: std::net::SocketAddr = match addr.parse() {
                Ok(a) => a,
                Err(_) => continue, // scope ids do not parse everywhere
            };
            let mut out = Vec::new();
            push_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn digits_are_padded_as_format_would() {
        for (n, width) in [
            (0u64, 1),
            (7, 3),
            (42, 2),
            (2026, 4),
            (123_456, 3),
            (u64::MAX, 1),
        ] {
            let mut out = Vec::new();
            push_padded(&mut out, n, width);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{n:0width$}"));
        }
    }

    #[test]
    fn combined_escapes_quotes_and_controls() {
        let mut out = Vec::new();
        escaped(&mut out, b"a\"b\\c\nd\xff");
        assert_eq!(out, b"a\\x22b\\x5Cc\\x0Ad\\xFF");
    }
}
