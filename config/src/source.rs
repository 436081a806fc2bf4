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

use crate::ConfigError;
use toml::{Table, Value};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "BULWARK_";

/// The one `BULWARK_` variable that is not an override: the config file's
/// path, read by the binaries' `--config` flag.
pub const CONFIG_PATH_ENV: &str = "BULWARK_CONFIG";

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
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "expected BULWARK_<SECTION>__<KEY>, with no empty part".into(),
            });
        }
        set_path(table, &path, parse_value(&raw)).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    Ok(())
}

fn parse_value(raw: &str) -> Value {
    let doc = format!("v = {raw}");
    match doc.parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_owned())),
        Err(_) => Value::String(raw.to_owned()),
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
                return Err(format!(
                    "`{}` is a value, not a section",
                    path[..=depth].join(".")
                ));
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
    fn empty_parts_are_rejected() {
        let mut t = Table::new();
        assert!(apply_env(&mut t, env(&[("BULWARK_DNS____X", "1")])).is_err());
        assert!(apply_env(&mut t, env(&[("BULWARK_", "1")])).is_err());
    }
}
