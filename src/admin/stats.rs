//! Per-service traffic figures for the dashboard, read from the process's
//! own Prometheus exposition (the text `/metrics` serves), so the dashboard
//! shows exactly what a scraper sees and the request path gains nothing.
//!
//! Only cumulative values are returned (requests, 5xx answers, the duration
//! histogram's buckets): the page turns two samples into a rate, an error
//! ratio and a p99 over the time between them, as Prometheus' `rate()` and
//! `histogram_quantile()` would.

use std::collections::BTreeMap;

use serde_json::{json, Value};

const REQUESTS: &str = "switchyard_requests_total";
const BUCKET: &str = "switchyard_request_duration_seconds_bucket";
const COUNT: &str = "switchyard_request_duration_seconds_count";
const SUM: &str = "switchyard_request_duration_seconds_sum";

/// One service's cumulative figures.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ServiceTotals {
    /// Answers of any status.
    pub requests: f64,
    /// Answers with a 5xx status.
    pub errors: f64,
    /// `(le, cumulative count)` in exposition order (ascending, `+Inf` last).
    pub buckets: Vec<(f64, f64)>,
    pub duration_count: f64,
    pub duration_sum: f64,
}

impl ServiceTotals {
    pub fn to_json(&self) -> Value {
        let buckets: Vec<Value> = self
            .buckets
            .iter()
            // JSON has no infinity: the +Inf bucket is `"le": null`.
            .map(|&(le, count)| json!({ "le": le.is_finite().then_some(le), "count": count }))
            .collect();
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "duration": {
                "buckets": buckets,
                "count": self.duration_count,
                "sum": self.duration_sum,
            },
        })
    }
}

/// The totals of every service that has a series in `exposition`.
pub fn totals(exposition: &str) -> BTreeMap<String, ServiceTotals> {
    let mut out: BTreeMap<String, ServiceTotals> = BTreeMap::new();
    for line in exposition.lines() {
        let Some(sample) = Sample::parse(line) else {
            continue;
        };
        let Some(service) = sample.label("service") else {
            continue;
        };
        let entry = out.entry(service.to_owned()).or_default();
        match sample.name {
            REQUESTS => {
                entry.requests += sample.value;
                if sample.label("code").is_some_and(|c| c.starts_with('5')) {
                    entry.errors += sample.value;
                }
            }
            BUCKET => {
                if let Some(le) = sample.label("le").and_then(parse_float) {
                    entry.buckets.push((le, sample.value));
                }
            }
            COUNT => entry.duration_count = sample.value,
            SUM => entry.duration_sum = sample.value,
            _ => {}
        }
    }
    out
}

/// One sample line: `name{label="value",...} value`.
#[derive(Debug)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Sample<'a>> {
        if line.starts_with('#') {
            return None;
        }
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..])?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let value = parse_float(rest.split_whitespace().next()?)?;
        Some(Sample {
            name,
            labels,
            value,
        })
    }

    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `a="x",b="y"} rest` → the pairs (escapes undone) and `rest`.
fn parse_labels(mut text: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (name, after) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name, value));
        text = &after[end + 1..];
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP switchyard_requests_total Requests answered.
# TYPE switchyard_requests_total counter
switchyard_requests_total{code="200",service="web"} 7
switchyard_requests_total{code="503",service="web"} 2
switchyard_requests_total{code="502",service="a\"b"} 1
switchyard_request_duration_seconds_bucket{service="web",le="0.001"} 1
switchyard_request_duration_seconds_bucket{service="web",le="0.01"} 8
switchyard_request_duration_seconds_bucket{service="web",le="+Inf"} 9
switchyard_request_duration_seconds_sum{service="web"} 0.05
switchyard_request_duration_seconds_count{service="web"} 9
switchyard_build_info{version="0.1.0"} 1
"#;

    #[test]
    fn exposition_becomes_per_service_totals() {
        let all = totals(TEXT);
        let web = &all["web"];
        assert_eq!((web.requests, web.errors), (9.0, 2.0));
        assert_eq!(
            web.buckets,
            vec![(0.001, 1.0), (0.01, 8.0), (f64::INFINITY, 9.0)]
        );
        assert_eq!((web.duration_count, web.duration_sum), (9.0, 0.05));
        assert_eq!(all["a\"b"].errors, 1.0, "escaped label values");
        assert_eq!(all.len(), 2, "no service label, no entry");
        let json = web.to_json();
        assert_eq!(json["duration"]["buckets"][2]["le"], Value::Null);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in ["", "x", "x{a=\"1\"", "x{a=1} 2", "x 1.2.3"] {
            assert!(Sample::parse(line).is_none(), "{line}");
        }
    }
}
