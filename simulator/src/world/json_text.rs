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

/// Two ASCII digits for every value 0..100.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
                                  2021222324252627282930313233343536373839\
                                  4041424344454647484950515253545556575859\
                                  6061626364656667686970717273747576777879\
                                  8081828384858687888990919293949596979899";

/// Appends `n` in decimal, without the formatting machinery (this runs
/// several times per dispatch).
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// Appends a signed `n` in decimal.
pub(crate) fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_u64(out, n.unsigned_abs());
}

/// Appends `n` as exactly `width` digits (zero-padded; `n` must fit).
pub(crate) fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut m = n;
    for slot in buf[..width.min(20)].iter_mut().rev() {
        *slot = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.push_str(std::str::from_utf8(&buf[..width.min(20)]).unwrap_or_default());
}

/// Appends a snowflake as a JSON string (`"123"`).
pub(crate) fn push_id(out: &mut String, id: u64) {
    out.push('"');
    push_u64(out, id);
    out.push('"');
}

/// Appends `true` or `false`.
pub(crate) fn push_bool(out: &mut String, b: bool) {
    out.push_str(if b { "true" } else { "false" });
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

    #[test]
    fn numbers_match_the_formatter() {
        let mut n = 1u64;
        let mut cases = vec![0, 9, 10, 99, 100, 101, 999, 1000, u64::MAX];
        while let Some(m) = n.checked_mul(7) {
            cases.extend([n - 1, n, n + 1]);
            n = m;
        }
        for n in cases {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
            for i in [n as i64, (n as i64).wrapping_neg()] {
                let mut out = String::new();
                push_i64(&mut out, i);
                assert_eq!(out, i.to_string());
            }
        }
        for (n, w, want) in [
            (0, 2, "00"),
            (7, 2, "07"),
            (59, 2, "59"),
            (2024, 4, "2024"),
            (5, 6, "000005"),
        ] {
            let mut out = String::new();
            push_padded(&mut out, n, w);
            assert_eq!(out, want);
        }
    }
}
