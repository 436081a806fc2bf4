//! Writing JSON text directly: strings with escaping, and snowflakes as
//! strings.
//!
//! The world keeps every entity pre-serialised and assembles payloads by
//! concatenation, which is an order of magnitude cheaper than building and
//! serialising `serde_json::Value` trees per event. These two helpers are
//! the only places where text is turned into JSON, so escaping cannot be
//! forgotten at one call site.

use std::fmt::Write as _;

/// Appends `s` as a JSON string literal (quotes included).
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends `Some(s)` as a string literal and `None` as `null`.
pub(crate) fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

/// Appends a snowflake as a JSON string (`"123"`).
pub(crate) fn push_id(out: &mut String, id: u64) {
    let _ = write!(out, "\"{id}\"");
}

/// Appends `[..]` of snowflake strings.
pub(crate) fn push_ids(out: &mut String, ids: &[u64]) {
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_id(out, *id);
    }
    out.push(']');
}

/// Appends `[a,b,..]` of already-serialised JSON values.
pub(crate) fn push_array<'a>(out: &mut String, items: impl Iterator<Item = &'a str>) {
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn escaped_strings_round_trip_through_serde_json() {
        for s in [
            "plain",
            "q\"uote",
            "back\\slash",
            "line\nbreak\u{1}",
            "ünï ✓",
            "",
        ] {
            let mut out = String::new();
            push_str(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
        }
        let mut out = String::new();
        push_ids(&mut out, &[1, 22]);
        assert_eq!(out, r#"["1","22"]"#);
    }
}
