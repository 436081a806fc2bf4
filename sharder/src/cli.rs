//! Command-line overrides of the shard layout: `--shards a..b --total n`
//! (this process runs exactly `[a, b)` of `n`), and the StatefulSet ordinal
//! from `POD_NAME` (`sharder-3` is process 3) when neither the file nor the
//! environment sets `sharder.process_index`.

use std::ops::Range;

/// Environment variable that sets `sharder.process_index`.
pub const PROCESS_INDEX_ENV: &str = "BULWARK_SHARDER__PROCESS_INDEX";

/// Parses `--shards`: a half-open range `a..b` of shard ids.
pub fn parse_shard_range(s: &str) -> Result<Range<u32>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("--shards {s:?}: expected a half-open range like 0..36"))?;
    let num = |v: &str, which: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("--shards {s:?}: the {which} {v:?} is not a shard id"))
    };
    let (start, end) = (num(a, "start")?, num(b, "end")?);
    if start >= end {
        return Err(format!(
            "--shards {s:?}: the range is empty (end must be above start)"
        ));
    }
    Ok(start..end)
}

/// The shards of `range` after checking it against the cluster: within
/// `total`, and, without a shared identify lock, made of whole identify
/// keys (`shard_id % max_concurrency`), so no other process shares a key.
pub fn check_shard_range(
    range: &Range<u32>,
    total: u32,
    max_concurrency: Option<u16>,
    shared_lock: bool,
) -> Result<Vec<u32>, String> {
    let shown = format!("{}..{}", range.start, range.end);
    if range.start >= range.end {
        return Err(format!("--shards {shown}: the range is empty"));
    }
    if range.end > total {
        return Err(format!(
            "--shards {shown}: ends beyond --total/total_shards {total}"
        ));
    }
    let whole = range.start == 0 && range.end == total;
    if let Some(mc) = max_concurrency.filter(|_| !shared_lock && !whole) {
        let mc = u32::from(mc.max(1));
        for key in 0..mc.min(total) {
            let mut shards = (key..total).step_by(mc as usize);
            let inside = shards.clone().any(|s| range.contains(&s));
            if inside && let Some(out) = shards.find(|s| !range.contains(s)) {
                return Err(format!(
                    "--shards {shown}: identify key {key} (shard_id % {mc}) is shared with \
                     shard {out} outside the range, without a shared lock; give whole keys \
                     or configure [redis] for the identify lock"
                ));
            }
        }
    }
    Ok(range.clone().collect())
}

/// Applies `--shards`/`--total` to `[sharder]` and checks the result.
pub fn apply_shard_args(
    cfg: &mut config::SharderConfig,
    shards: Option<&str>,
    total: Option<u32>,
    shared_lock: bool,
) -> Result<(), String> {
    if let Some(t) = total {
        if !(1..=config::MAX_TOTAL_SHARDS).contains(&t) {
            return Err(format!(
                "--total {t}: must be within 1..={}",
                config::MAX_TOTAL_SHARDS
            ));
        }
        cfg.total_shards = t;
        cfg.total_shards_auto = false;
    }
    if let Some(s) = shards {
        if cfg.total_shards_auto {
            return Err(format!(
                "--shards {s} with total_shards = \"auto\": a shard range needs the total \
                 every process shares; add --total N"
            ));
        }
        let range = parse_shard_range(s)?;
        check_shard_range(&range, cfg.total_shards, cfg.max_concurrency, shared_lock)?;
        cfg.process_shards = Some(range);
    }
    if total.is_some() && cfg.process_shards.is_none() {
        cfg.check().map_err(|e| format!("--total: {e}"))?;
    }
    Ok(())
}

/// The StatefulSet ordinal of a pod name (`sharder-3` -> 3).
pub fn pod_ordinal(pod_name: &str) -> Option<u32> {
    let (_, n) = pod_name.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The `process_index` to take from `POD_NAME`, when neither the
/// environment nor the file (`toml_text`) sets one.
pub fn ordinal_process_index(env: &[(String, String)], toml_text: Option<&str>) -> Option<u32> {
    if env.iter().any(|(k, _)| k == PROCESS_INDEX_ENV) {
        return None;
    }
    if toml_text.is_some_and(config::SharderConfig::toml_sets_process_index) {
        return None;
    }
    let pod = env.iter().find(|(k, _)| k == "POD_NAME")?;
    pod_ordinal(&pod.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_half_open_ranges_and_names_the_flag_in_errors() {
        assert_eq!(parse_shard_range("0..36"), Ok(0..36));
        assert_eq!(parse_shard_range("252..288"), Ok(252..288));
        for (bad, says) in [
            ("5..5", "empty"),
            ("9..3", "empty"),
            ("0-36", "half-open range"),
            ("a..3", "start \"a\""),
            ("0..", "end \"\""),
            ("-1..4", "start"),
        ] {
            let e = parse_shard_range(bad).unwrap_err();
            assert!(e.starts_with("--shards"), "{e}");
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn range_checks_total_and_whole_identify_keys() {
        assert_eq!(
            check_shard_range(&(0..4), 8, None, false).unwrap(),
            [0, 1, 2, 3]
        );
        let e = check_shard_range(&(0..9), 8, None, false).unwrap_err();
        assert!(e.contains("beyond --total/total_shards 8"), "{e}");
        // 288 shards, 16 keys: 0..36 touches every key, each shared with
        // shards outside, so it needs the shared lock.
        let e = check_shard_range(&(0..36), 288, Some(16), false).unwrap_err();
        assert!(
            e.contains("identify key 0") && e.contains("shard 48"),
            "{e}"
        );
        assert_eq!(
            check_shard_range(&(0..36), 288, Some(16), true)
                .unwrap()
                .len(),
            36
        );
        // Unknown max_concurrency: checked at start-up instead.
        assert!(check_shard_range(&(0..36), 288, None, false).is_ok());
        // 32 shards, 16 keys: shards 0..16 and 16..32 share every key;
        // the whole range owns its keys.
        assert!(check_shard_range(&(0..16), 32, Some(16), false).is_err());
        assert!(check_shard_range(&(0..32), 32, Some(16), false).is_ok());
        // More keys than shards in range: 4 shards of 4 total, mc 16.
        assert!(check_shard_range(&(2..4), 4, Some(16), false).is_ok());
    }

    #[test]
    fn cli_overrides_total_and_sets_this_process_shards() {
        let mut c = config::SharderConfig::default();
        apply_shard_args(&mut c, Some("0..36"), Some(288), true).unwrap();
        assert_eq!(
            (c.total_shards, c.process_shards.clone()),
            (288, Some(0..36))
        );
        let mut c = config::SharderConfig::default();
        let e = apply_shard_args(&mut c, Some("0..36"), None, false).unwrap_err();
        assert!(
            e.contains("--shards 0..36") && e.contains("total_shards 1"),
            "{e}"
        );
        assert_eq!(c.process_shards, None);
        let e = apply_shard_args(&mut c, None, Some(0), false).unwrap_err();
        assert!(e.starts_with("--total"), "{e}");
        let e = apply_shard_args(&mut c, None, Some(u32::MAX), false).unwrap_err();
        assert!(e.starts_with("--total 4294967295"), "{e}");
    }

    #[test]
    fn a_shard_range_needs_a_fixed_total() {
        let auto = config::SharderConfig {
            total_shards_auto: true,
            ..config::SharderConfig::default()
        };
        let mut c = auto.clone();
        let e = apply_shard_args(&mut c, Some("0..16"), None, true).unwrap_err();
        assert!(e.contains("auto") && e.contains("--total"), "{e}");
        let mut c = auto;
        apply_shard_args(&mut c, Some("0..16"), Some(32), true).unwrap();
        assert!(!c.total_shards_auto, "--total replaces auto");
        assert_eq!(c.total_shards, 32);
    }

    #[test]
    fn pod_name_ordinal_only_when_nothing_sets_the_index() {
        assert_eq!(pod_ordinal("sharder-3"), Some(3));
        assert_eq!(pod_ordinal("bulwark-sharder-12"), Some(12));
        assert_eq!(pod_ordinal("sharder"), None);
        assert_eq!(pod_ordinal("sharder-"), None);
        assert_eq!(pod_ordinal("sharder-7f9c"), None);
        let env = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        let pod = env(&[("POD_NAME", "sharder-3")]);
        assert_eq!(ordinal_process_index(&pod, None), Some(3));
        assert_eq!(
            ordinal_process_index(&pod, Some("[sharder]\ntotal_shards = 8\n")),
            Some(3)
        );
        assert_eq!(
            ordinal_process_index(&pod, Some("[sharder]\nprocess_index = 1\n")),
            None
        );
        let both = env(&[("POD_NAME", "sharder-3"), (PROCESS_INDEX_ENV, "1")]);
        assert_eq!(ordinal_process_index(&both, None), None);
        assert_eq!(ordinal_process_index(&[], None), None);
    }
}
