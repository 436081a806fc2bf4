//! Reading numbers out of Prometheus text (`/metrics`).
//!
//! Scenarios assert counters, not log lines; this is the parser. A series
//! is matched by name and by a subset of its labels; [`sum`] adds every
//! matching series (e.g. all `upstream` labels of one counter).

/// One sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Every sample of `text` (comments and malformed lines skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((n, l)) => (n, parse_labels(l.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"")?;
        let end = after.find('"')?;
        out.push((
            k.trim_start_matches(',').to_owned(),
            after[..end].to_owned(),
        ));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

/// The sum of every series named `name` that carries all of `labels`;
/// 0 when none (a counter never incremented is not exported).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

/// [`sum`] as an integer counter.
pub fn count(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    sum(text, name, labels).max(0.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_by_name_and_labels() {
        let t = "# TYPE a counter\na_total 3\nb{x=\"1\",y=\"2\"} 4\nb{x=\"2\"} 5\nbad line\n";
        assert_eq!(count(t, "a_total", &[]), 3);
        assert_eq!(count(t, "b", &[]), 9);
        assert_eq!(count(t, "b", &[("x", "1")]), 4);
        assert_eq!(count(t, "missing", &[]), 0);
    }
}
