//! The worker's cache against the simulator's ground truth.
//!
//! "Cache equals ground truth" is checked through the worker's read API,
//! the way a bot would read it, guild by guild: availability, name,
//! `member_count`, the cached member count, and the id-to-name maps of
//! channels and roles. Any difference is reported with the guild and the
//! two values.

use crate::http;
use crate::{Result, ScenarioError};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// How a cache compared with the truth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheDiff {
    /// Guilds in the truth.
    pub guilds: usize,
    /// Guilds whose every compared field matched.
    pub matching: usize,
    /// The first differences, readable.
    pub differences: Vec<String>,
}

impl CacheDiff {
    /// True when every guild matched.
    pub fn equal(&self) -> bool {
        self.guilds == self.matching
    }
}

/// The ids of the guilds in `truth`.
pub fn guild_ids(truth: &Value) -> Vec<u64> {
    truth
        .get("guilds")
        .and_then(Value::as_object)
        .map(|g| g.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

fn names(map: Option<&Value>) -> BTreeMap<String, String> {
    map.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(id, v)| {
                    let name = v.get("name").and_then(Value::as_str).unwrap_or("");
                    (id.clone(), name.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn list_names(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|v| {
                    let id = v.get("id").and_then(Value::as_str).unwrap_or("");
                    let name = v.get("name").and_then(Value::as_str).unwrap_or("");
                    (id.to_owned(), name.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn get_json(worker: SocketAddr, path: &str) -> Result<(u16, Value)> {
    let a = http::get(worker, path)
        .await
        .map_err(|e| ScenarioError::Setup(e.to_string()))?;
    Ok((
        a.status,
        serde_json::from_str(&a.body).unwrap_or(Value::Null),
    ))
}

/// Compares one guild; `Ok(None)` when equal, else the difference.
async fn compare_guild(worker: SocketAddr, id: &str, want: &Value) -> Result<Option<String>> {
    let (status, got) = get_json(worker, &format!("/v1/guilds/{id}")).await?;
    let unavailable = want
        .get("unavailable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if status != 200 {
        return Ok(Some(format!("guild {id}: read API answered {status}")));
    }
    let mut diffs = Vec::new();
    let avail = got.get("available").and_then(Value::as_bool);
    if avail != Some(!unavailable) {
        diffs.push(format!("available {avail:?} vs truth {}", !unavailable));
    }
    if unavailable {
        return Ok((!diffs.is_empty()).then(|| format!("guild {id}: {}", diffs.join("; "))));
    }
    let want_name = want.pointer("/guild/name").and_then(Value::as_str);
    let got_name = got.get("name").and_then(Value::as_str);
    if want_name != got_name {
        diffs.push(format!("name {got_name:?} vs {want_name:?}"));
    }
    let want_count = want.get("member_count").and_then(Value::as_u64);
    let got_count = got.get("member_count").and_then(Value::as_u64);
    if want_count != got_count {
        diffs.push(format!("member_count {got_count:?} vs {want_count:?}"));
    }
    let want_members = want
        .get("members")
        .and_then(Value::as_object)
        .map(|m| m.len() as u64);
    let got_members = got.pointer("/cached/members").and_then(Value::as_u64);
    if want_members != got_members {
        diffs.push(format!(
            "cached members {got_members:?} vs {want_members:?}"
        ));
    }
    for (kind, field) in [("channels", "channels"), ("roles", "roles")] {
        let (_, list) = get_json(worker, &format!("/v1/guilds/{id}/{kind}")).await?;
        let got = list_names(&list);
        let want = names(want.get(field));
        if got != want {
            let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
            let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
            let renamed: Vec<String> = want
                .iter()
                .filter_map(|(k, w)| {
                    let g = got.get(k)?;
                    (g != w).then(|| format!("{k} cached {g:?} true {w:?}"))
                })
                .take(2)
                .collect();
            diffs.push(format!(
                "{kind}: {} cached vs {} true ({missing} missing, {extra} extra, renamed: {})",
                got.len(),
                want.len(),
                renamed.join(", ")
            ));
        }
    }
    Ok((!diffs.is_empty()).then(|| format!("guild {id}: {}", diffs.join("; "))))
}

/// Compares every guild of `truth` with the worker's cache.
pub async fn compare(worker: SocketAddr, truth: &Value) -> Result<CacheDiff> {
    let guilds: Vec<(String, Value)> = truth
        .get("guilds")
        .and_then(Value::as_object)
        .map(|g| g.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let results: Vec<Result<Option<String>>> = futures_util::stream::iter(guilds.iter())
        .map(|(id, want)| compare_guild(worker, id, want))
        .buffer_unordered(8)
        .collect()
        .await;
    let mut diff = CacheDiff {
        guilds: guilds.len(),
        ..CacheDiff::default()
    };
    for r in results {
        match r? {
            None => diff.matching += 1,
            Some(d) if diff.differences.len() < 5 => diff.differences.push(d),
            Some(_) => {}
        }
    }
    Ok(diff)
}
