//! The request path as routing and the backend see it.
//!
//! Switchyard routes by path prefix, so it must match on the path the backend
//! will act on, or `/public/../admin` would pass a `/` route and reach the
//! backend's `/admin`. Dot segments are removed (RFC 3986 §5.2.4) with `%2e`
//! counted as a dot, as backends that decode before resolving do; runs of `/`
//! are merged when configured. Encodings that different parsers read
//! differently — `%2f` and `%5c` (a slash inside a segment), `%00`, a raw
//! `\` — are reported so the caller can refuse them. Everything else is kept
//! byte for byte (no other decoding, no case change). Pure, and allocation-free
//! for a path that needs no change.

use std::borrow::Cow;

/// A path after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a> {
    /// Dot segments removed (and `/` runs merged, when asked).
    pub path: Cow<'a, str>,
    /// It holds `%2f`, `%5c`, `%00` or `\` (case-insensitive hex).
    pub ambiguous: bool,
}

/// Normalise `path` (the path of a request target, without its query).
/// A path that does not start with `/` (`*`, an empty one) is left alone.
pub fn normalise(path: &str, merge_slashes: bool) -> NormalPath<'_> {
    let scan = scan(path.as_bytes(), merge_slashes);
    let path = if scan.rewrite && path.starts_with('/') {
        Cow::Owned(remove_dot_segments(path, merge_slashes))
    } else {
        Cow::Borrowed(path)
    };
    NormalPath {
        path,
        ambiguous: scan.ambiguous,
    }
}

struct Scan {
    /// A segment may be a dot segment, or `/` runs must be merged.
    rewrite: bool,
    ambiguous: bool,
}

/// One pass over the bytes: does anything need doing?
fn scan(bytes: &[u8], merge_slashes: bool) -> Scan {
    let mut scan = Scan {
        rewrite: false,
        ambiguous: false,
    };
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'/' => {
                let next = &bytes[i + 1..];
                match next.first() {
                    Some(b'.' | b'%') => {
                        let end = next.iter().position(|&c| c == b'/').unwrap_or(next.len());
                        if classify(&next[..end]) != Segment::Name {
                            scan.rewrite = true;
                        }
                    }
                    Some(b'/') if merge_slashes => scan.rewrite = true,
                    _ => {}
                }
            }
            b'\\' => scan.ambiguous = true,
            b'%' => {
                if let Some(hex) = bytes.get(i + 1..i + 3) {
                    if hex.eq_ignore_ascii_case(b"2f")
                        || hex.eq_ignore_ascii_case(b"5c")
                        || hex == b"00"
                    {
                        scan.ambiguous = true;
                    }
                }
            }
            _ => {}
        }
    }
    scan
}

#[derive(PartialEq)]
enum Segment {
    Dot,
    DotDot,
    Name,
}

fn classify(s: &[u8]) -> Segment {
    let dots = match s.len() {
        1 if s == b"." => 1,
        2 if s == b".." => 2,
        3 if s.eq_ignore_ascii_case(b"%2e") => 1,
        4 if s.eq_ignore_ascii_case(b".%2e") || s.eq_ignore_ascii_case(b"%2e.") => 2,
        6 if s.eq_ignore_ascii_case(b"%2e%2e") => 2,
        _ => 0,
    };
    match dots {
        1 => Segment::Dot,
        2 => Segment::DotDot,
        _ => Segment::Name,
    }
}

/// RFC 3986 §5.2.4 over segments: `.` is dropped, `..` drops the segment
/// before it (never above the root), a path ending in a dot segment keeps a
/// trailing `/`. With `merge_slashes`, empty segments other than a trailing
/// one are dropped.
fn remove_dot_segments(path: &str, merge_slashes: bool) -> String {
    let rest = &path[1..];
    let count = rest.split('/').count();
    let mut kept: Vec<&str> = Vec::with_capacity(count);
    let mut trailing_slash = false;
    for (i, segment) in rest.split('/').enumerate() {
        let last = i + 1 == count;
        trailing_slash = false;
        match classify(segment.as_bytes()) {
            Segment::Dot => trailing_slash = last,
            Segment::DotDot => {
                kept.pop();
                trailing_slash = last;
            }
            Segment::Name if merge_slashes && segment.is_empty() && !last => {}
            Segment::Name => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> String {
        normalise(path, false).path.into_owned()
    }

    #[test]
    fn a_plain_path_is_borrowed_unchanged() {
        for path in [
            "/",
            "/api/v1/users",
            "/a.b/c..d/.e",
            "/%41%42",
            "/a//b",
            "*",
            "",
        ] {
            let n = normalise(path, false);
            assert!(matches!(n.path, Cow::Borrowed(_)), "{path}");
            assert_eq!(n.path, path);
            assert!(!n.ambiguous, "{path}");
        }
    }

    #[test]
    fn dot_segments_are_removed_as_rfc3986_says() {
        // RFC 3986 §5.2.4's examples and the bypasses issue 13 names.
        assert_eq!(norm("/a/b/c/./../../g"), "/a/g");
        assert_eq!(norm("/mid/content=5/../6"), "/mid/6");
        assert_eq!(norm("/public/../admin"), "/admin");
        assert_eq!(norm("/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/%2E./admin"), "/admin");
        assert_eq!(norm("/.%2e/admin"), "/admin");
        assert_eq!(norm("/x/%2e/y"), "/x/y");
        assert_eq!(norm("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/."), "/a/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/."), "/");
        assert_eq!(norm("/a/./b/"), "/a/b/");
        // Not dot segments: kept byte for byte.
        assert_eq!(
            norm("/a/...b/..c/c../%2e%2e%2e"),
            "/a/...b/..c/c../%2e%2e%2e"
        );
    }

    #[test]
    fn empty_segments_are_kept_unless_merging() {
        assert_eq!(norm("/a//b/./c"), "/a//b/c");
        let merged = |p| normalise(p, true).path.into_owned();
        assert_eq!(merged("//admin"), "/admin");
        assert_eq!(merged("/a///b//"), "/a/b/");
        assert_eq!(merged("//"), "/");
        assert_eq!(merged("/a//../b"), "/b");
    }

    #[test]
    fn ambiguous_encodings_are_reported() {
        for path in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a%5Cb",
            "/a%00",
            "/a\\b",
            "/x/%2F../y",
        ] {
            assert!(normalise(path, false).ambiguous, "{path}");
        }
        for path in ["/a%20b", "/a%2", "/a%", "/%2e", "/a%0"] {
            assert!(!normalise(path, false).ambiguous, "{path}");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing_more() {
        let paths = ["/a/b/../../..//c/./d/..", "/%2e/%2E%2e/x/", "/a/.%2E/b//"];
        for merge in [false, true] {
            for path in paths {
                let once = normalise(path, merge).path.into_owned();
                assert_eq!(normalise(&once, merge).path, once.as_str(), "{path}");
            }
        }
    }
}
