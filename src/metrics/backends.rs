//! The per-backend families of `/metrics`, written at scrape time straight
//! from the backends' live state.
//!
//! A backend's counters are atomics inside the [`Backend`] and its labels
//! are its own `service` and `address` strings, so a backend owns no
//! prometheus series: at 10,000 registered instances the eleven series each
//! would hold in the prometheus registry (label vectors, label-pair copies,
//! hash map slots: ~6 KiB a backend) are never allocated. The scrape walks
//! the table's backends once per family, sorted by labels; two backends
//! under the same labels (the same `host:port` configured and registered in
//! one service) report as one series: counts and in-flight requests added,
//! up if either is, and the state of the more available one.
//!
//! The text follows the exposition format the prometheus crate writes for
//! the other families (label names sorted, `# HELP` and `# TYPE` first), and
//! a family with no backend is left out, as the crate leaves out empty ones.

use std::fmt::Write;
use std::sync::Arc;

use crate::backend::{Backend, Health};

/// The values of `switchyard_backend_state`'s `state` label, most available
/// first; exactly one is 1.
pub const BACKEND_STATES: [&str; 5] = ["ready", "unknown", "unhealthy", "ejected", "draining"];

/// One label set's numbers, summed over the backends that share it.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    ok: u64,
    error: u64,
    timeout: u64,
    ejections: u64,
    active: u64,
    up: bool,
    /// Index into [`BACKEND_STATES`].
    state: usize,
}

/// Append every backend family for `backends` to `out`.
pub fn render<'a>(backends: impl Iterator<Item = &'a Arc<Backend>>, out: &mut String) {
    let rows = rows(backends);
    if rows.is_empty() {
        return;
    }
    // The text is large (~1 KiB per backend); sized once, it is not copied
    // through ever larger buffers, all of which the allocator would keep.
    out.reserve(rows.iter().map(|(labels, _)| text_size(*labels)).sum());
    family(
        out,
        "switchyard_backend_requests_total",
        "Attempts sent to a backend, by outcome.",
        "counter",
        &rows,
        |labels, row, out| {
            for (outcome, value) in [
                ("ok", row.ok),
                ("error", row.error),
                ("timeout", row.timeout),
            ] {
                series(
                    out,
                    "switchyard_backend_requests_total",
                    labels,
                    Some(("outcome", outcome)),
                    value,
                );
            }
        },
    );
    family(
        out,
        "switchyard_backend_up",
        "1 when the backend may receive traffic.",
        "gauge",
        &rows,
        |labels, row, out| {
            series(
                out,
                "switchyard_backend_up",
                labels,
                None,
                u64::from(row.up),
            );
        },
    );
    family(
        out,
        "switchyard_backend_active_requests",
        "Requests in flight to the backend.",
        "gauge",
        &rows,
        |labels, row, out| {
            series(
                out,
                "switchyard_backend_active_requests",
                labels,
                None,
                row.active,
            );
        },
    );
    family(
        out,
        "switchyard_backend_state",
        "1 for the backend's current state (ready, unknown, unhealthy, ejected, \
         draining; the first that applies from the right), 0 for the others.",
        "gauge",
        &rows,
        |labels, row, out| {
            for (i, state) in BACKEND_STATES.iter().enumerate() {
                let value = u64::from(i == row.state);
                series(
                    out,
                    "switchyard_backend_state",
                    labels,
                    Some(("state", state)),
                    value,
                );
            }
        },
    );
    family(
        out,
        "switchyard_outlier_ejections_total",
        "Ejections of a backend by outlier detection (passive health).",
        "counter",
        &rows,
        |labels, row, out| {
            series(
                out,
                "switchyard_outlier_ejections_total",
                labels,
                None,
                row.ejections,
            );
        },
    );
}

/// (service, backend) labels and their numbers, sorted by labels.
type Rows<'a> = Vec<((&'a str, &'a str), Row)>;

fn rows<'a>(backends: impl Iterator<Item = &'a Arc<Backend>>) -> Rows<'a> {
    let mut all: Vec<&Arc<Backend>> = backends.collect();
    all.sort_unstable_by(|a, b| (&*a.service, &*a.address).cmp(&(&*b.service, &*b.address)));
    let mut rows: Rows<'a> = Vec::with_capacity(all.len());
    for backend in all {
        let labels = (&*backend.service, &*backend.address);
        let row = row(backend);
        match rows.last_mut() {
            Some((last, sum)) if *last == labels => {
                sum.ok += row.ok;
                sum.error += row.error;
                sum.timeout += row.timeout;
                sum.ejections += row.ejections;
                sum.active += row.active;
                sum.up |= row.up;
                sum.state = sum.state.min(row.state);
            }
            _ => rows.push((labels, row)),
        }
    }
    rows
}

/// About how many bytes the eleven lines of one label set take.
fn text_size((service, backend): (&str, &str)) -> usize {
    // Names, label names, the `outcome`/`state` values and the numbers
    // (~760 bytes), plus the two label values on each of the 11 lines.
    760 + 11 * (service.len() + backend.len())
}

fn row(b: &Backend) -> Row {
    Row {
        ok: b.counters.ok.get(),
        error: b.counters.error.get(),
        timeout: b.counters.timeout.get(),
        ejections: b.counters.ejections.get(),
        active: u64::from(b.active_requests()),
        up: b.is_ready(),
        state: state_index(b),
    }
}

/// The one state a backend is reported in: draining (taking no new
/// requests) over ejected over its health; "ready" only when it may be picked.
fn state_index(b: &Backend) -> usize {
    if !b.takes_new_requests() {
        4
    } else if b.is_ejected() {
        3
    } else {
        match b.health() {
            Health::Healthy => 0,
            Health::Unknown => 1,
            Health::Unhealthy => 2,
        }
    }
}

/// `# HELP`, `# TYPE`, then one call of `each` per label set.
fn family(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    rows: &Rows<'_>,
    each: impl Fn((&str, &str), &Row, &mut String),
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, row) in rows {
        each(*labels, row, out);
    }
}

/// `name{backend="...",outcome="...",service="..."} value`: label names
/// sorted, as the prometheus crate writes them.
fn series(
    out: &mut String,
    name: &str,
    (service, backend): (&str, &str),
    extra: Option<(&str, &str)>,
    value: u64,
) {
    let mut labels = [("backend", backend), ("service", service), ("", "")];
    let count = match extra {
        Some(pair) => {
            labels[2] = pair;
            labels.sort_unstable_by_key(|(label, _)| *label);
            3
        }
        None => 2,
    };
    out.push_str(name);
    out.push('{');
    for (i, (label, label_value)) in labels[..count].iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(label);
        out.push_str("=\"");
        escaped(out, label_value);
        out.push('"');
    }
    let _ = writeln!(out, "}} {value}");
}

/// A label value as the text format needs it: `\`, `"` and newlines escaped.
fn escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::backend;

    #[test]
    fn each_backend_reports_its_counters_under_its_labels() {
        let b = backend("127.0.0.1:9001", 1);
        b.counters.ok.inc();
        b.counters.ok.inc();
        b.counters.timeout.inc();
        let _in_flight = b.start_request();
        let mut text = String::new();
        render([&b].into_iter(), &mut text);
        for line in [
            "# TYPE switchyard_backend_requests_total counter",
            r#"switchyard_backend_requests_total{backend="127.0.0.1:9001",outcome="ok",service="svc"} 2"#,
            r#"switchyard_backend_requests_total{backend="127.0.0.1:9001",outcome="error",service="svc"} 0"#,
            r#"switchyard_backend_requests_total{backend="127.0.0.1:9001",outcome="timeout",service="svc"} 1"#,
            r#"switchyard_backend_up{backend="127.0.0.1:9001",service="svc"} 1"#,
            r#"switchyard_backend_active_requests{backend="127.0.0.1:9001",service="svc"} 1"#,
            r#"switchyard_backend_state{backend="127.0.0.1:9001",service="svc",state="ready"} 1"#,
            r#"switchyard_backend_state{backend="127.0.0.1:9001",service="svc",state="draining"} 0"#,
            r#"switchyard_outlier_ejections_total{backend="127.0.0.1:9001",service="svc"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn backends_under_the_same_labels_report_one_series() {
        let (a, b) = (backend("127.0.0.1:9001", 1), backend("127.0.0.1:9001", 1));
        a.counters.ok.inc();
        b.counters.ok.inc();
        b.set_draining(true);
        let mut text = String::new();
        render([&a, &b].into_iter(), &mut text);
        let ok: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(r#"outcome="ok""#))
            .collect();
        assert_eq!(
            ok,
            [
                r#"switchyard_backend_requests_total{backend="127.0.0.1:9001",outcome="ok",service="svc"} 2"#
            ]
        );
        assert!(text.contains(
            r#"switchyard_backend_state{backend="127.0.0.1:9001",service="svc",state="ready"} 1"#
        ));
        assert!(text.contains(r#"switchyard_backend_up{backend="127.0.0.1:9001",service="svc"} 1"#));
    }

    #[test]
    fn the_text_fits_the_size_reserved_for_it() {
        let b = backend("127.0.0.1:9001", 1);
        let mut text = String::new();
        render([&b].into_iter(), &mut text);
        let header: usize = text
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(|l| l.len() + 1)
            .sum();
        let series = text.len() - header;
        assert!(series <= text_size(("svc", "127.0.0.1:9001")), "{series}");
    }

    #[test]
    fn no_backend_no_family() {
        let mut text = String::new();
        render(std::iter::empty(), &mut text);
        assert_eq!(text, "");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escaped(&mut out, "a\"b\\c\nd");
        assert_eq!(out, r#"a\"b\\c\nd"#);
    }
}
