//! Merging the TOML file with environment overrides.
//!
//! # Algorithm
//! The file is parsed into a TOML table. Every environment variable named
//! `BULWARK_<SECTION>__<KEY>` (double underscores separate levels, case is
//! folded to lower) then sets `section.key` in that table. The value is read
//! as a TOML value when it is one (`42`, `true`, `["a", "b"]`, `"quoted"`),
//! and as a plain string otherwise (`30s`, `amqp://host`). Only after the
//! merge is the table deserialised into typed structs, so an override gets
//! exactly the same type checks and bounds as the file.
//!
//! Hostile or mistyped variables are errors, never panics or surprises: a
//! path deeper than [`MAX_ENV_DEPTH`] is refused (a huge name would otherwise
//! build a table nested thousands deep), a value is a TOML value only when it
//! is exactly one (`1\nx = 2` is the string it looks like), and the secret
//! keys ([`VERBATIM_KEYS`]) keep their text as given, so a numeric-looking
//! password such as `0x1F` or `1e3` is not turned into `31` or `1000.0`.

use crate::ConfigError;
use toml::{Table, Value};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "BULWARK_";

/// The one `BULWARK_` variable that is not an override: the config file's
/// path, read by the binaries' `--config` flag.
pub const CONFIG_PATH_ENV: &str = "BULWARK_CONFIG";

/// Deepest `section.key` path an environment variable may set. Every key
/// of the configuration is two levels deep; four leaves room to grow.
pub const MAX_ENV_DEPTH: usize = 4;

/// Keys whose override is taken as its text (unless it is one quoted TOML
/// string): secrets and URLs, which must arrive byte for byte.
pub const VERBATIM_KEYS: &[&str] = &[
    "discord.token",
    "amqp.url",
    "redis.url",
    "sharder.admin_token",
];

/// Applies `BULWARK_*` variables from `vars` onto `table`.
pub fn apply_env(
    table: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != CONFIG_PATH_ENV)
        .collect();
    // Deterministic order, so two variables for one key always resolve alike.
    vars.sort();
    for (var, raw) in vars {
        let name = var.strip_prefix(ENV_PREFIX).unwrap_or_default();
        let path: Vec<String> = name.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "expected BULWARK_<SECTION>__<KEY>, with no empty part".into(),
            });
        }
        if path.len() > MAX_ENV_DEPTH {
            return Err(ConfigError::Env {
                var,
                message: format!(
                    "{} levels; no key is deeper than {MAX_ENV_DEPTH} (BULWARK_<SECTION>__<KEY>)",
                    path.len()
                ),
            });
        }
        let value = if VERBATIM_KEYS.contains(&path.join(".").as_str()) {
            match parse_value(&raw) {
                Value::String(s) => Value::String(s),
                _ => Value::String(raw),
            }
        } else {
            parse_value(&raw)
        };
        set_path(table, &path, value).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    Ok(())
}

/// `raw` as the one TOML value it spells, or as a string.
fn parse_value(raw: &str) -> Value {
    let doc = format!("v = {raw}");
    match doc.parse::<Table>() {
        Ok(mut t) if t.len() == 1 => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_owned())),
        _ => Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cur = table;
    for (depth, key) in parents.iter().enumerate() {
        let entry = cur
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        cur = match entry {
            Value::Table(t) => t,
            _ => {
                let section: Vec<&str> = path
                    .iter()
                    .take(depth.saturating_add(1))
                    .map(String::as_str)
                    .collect();
                return Err(format!("`{}` is a value, not a section", section.join(".")));
            }
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_set_typed_values_by_path() {
        let mut t: Table = "[dns]\ncache_size = 5\n".parse().unwrap();
        apply_env(
            &mut t,
            env(&[
                ("BULWARK_DNS__CACHE_SIZE", "77"),
                ("BULWARK_DNS__MAX_STALE", "2h"),
                ("BULWARK_DNS__UPSTREAMS", r#"["127.0.0.1:53"]"#),
                ("PATH", "/usr/bin"),
                ("BULWARK_CONFIG", "/etc/bulwark/bulwark.toml"),
            ]),
        )
        .unwrap();
        let dns = t["dns"].as_table().unwrap();
        assert_eq!(dns["cache_size"].as_integer(), Some(77));
        assert_eq!(dns["max_stale"].as_str(), Some("2h"));
        assert_eq!(dns["upstreams"].as_array().unwrap().len(), 1);
        assert!(!t.contains_key("path"));
        assert!(
            !t.contains_key("config"),
            "the path variable is no override"
        );
    }

    #[test]
    fn a_value_cannot_become_a_section() {
        let mut t: Table = "[dns]\ncache_size = 5\n".parse().unwrap();
        let err = apply_env(&mut t, env(&[("BULWARK_DNS__CACHE_SIZE__X", "1")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("BULWARK_DNS__CACHE_SIZE__X"), "{msg}");
        assert!(msg.contains("dns.cache_size"), "{msg}");
    }

    #[test]
    fn deep_paths_multi_line_values_and_secrets() {
        let mut t = Table::new();
        let deep = format!("BULWARK_{}", vec!["A"; 5000].join("__"));
        let e = apply_env(&mut t, env(&[(&deep, "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("5000 levels"), "{e}");
        assert!(t.is_empty());
        apply_env(&mut t, env(&[("BULWARK_DNS__NDOTS", "1\nx = 2")])).unwrap();
        assert_eq!(t["dns"]["ndots"].as_str(), Some("1\nx = 2"));
        apply_env(
            &mut t,
            env(&[
                ("BULWARK_DISCORD__TOKEN", "0x1F"),
                ("BULWARK_SHARDER__ADMIN_TOKEN", "\"quoted\""),
                ("BULWARK_REDIS__URL", "1e3"),
                ("BULWARK_DNS__CACHE_SIZE", "0x1F"),
            ]),
        )
        .unwrap();
        assert_eq!(t["discord"]["token"].as_str(), Some("0x1F"));
        assert_eq!(t["sharder"]["admin_token"].as_str(), Some("quoted"));
        assert_eq!(t["redis"]["url"].as_str(), Some("1e3"));
        assert_eq!(t["dns"]["cache_size"].as_integer(), Some(31));
    }

    #[test]
    fn empty_parts_are_rejected() {
        let mut t = Table::new();
        assert!(apply_env(&mut t, env(&[("BULWARK_DNS____X", "1")])).is_err());
        assert!(apply_env(&mut t, env(&[("BULWARK_", "1")])).is_err());
    }
}
