//! A small Prometheus text-format parser: samples, sums over label
//! subsets, label sets.

/// A sample's labels, in the order printed.
pub type Labels = Vec<(String, String)>;

/// One Prometheus sample: name, labels, value.
pub fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    chars.next(); // opening quote
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, other)) => value.push(other),
                                None => {}
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &inner[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// The sum of every sample named `name` whose labels include all of
/// `labels` (any order); `None` when no sample matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for (n, ls, v) in text.lines().filter_map(parse_sample) {
        if n != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, want)| ls.iter().any(|(lk, lv)| lk == k && lv == want));
        if all {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Every label set of samples named `name`.
pub fn metric_label_sets(text: &str, name: &str) -> Vec<Labels> {
    text.lines()
        .filter_map(parse_sample)
        .filter(|(n, _, _)| n == name)
        .map(|(_, ls, _)| ls)
        .collect()
}
