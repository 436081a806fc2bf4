//! `sharder reshard`: the command-line form of `POST /admin/reshard`, for
//! an operator at a terminal or a job in the cluster.
//!
//! It talks to a running sharder (any pod of the StatefulSet: they share
//! the reshard in Redis) with the admin token of the same configuration,
//! so `--config` is all it needs besides the new total. Without `--total`
//! it shows the reshard in progress. With `--wait` it follows the reshard
//! to its end, one progress line per second, and fails if it was aborted.

use config::Secret;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// What the command asks.
#[derive(Debug, Clone)]
pub struct ReshardCli {
    /// The sharder's admin endpoint, e.g. `http://sharder-0.sharder:8080`.
    pub url: String,
    /// `sharder.admin_token` (redacted in `Debug`).
    pub admin_token: Secret,
    /// The new total; `None` shows the reshard in progress.
    pub total: Option<u32>,
    pub force_shrink: bool,
    /// Follow the reshard until it ends.
    pub wait: bool,
    /// How often `--wait` asks.
    pub every: Duration,
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum ReshardCliError {
    #[error("cannot reach the sharder at {url}: {reason}; check --url (or sharder.http_listen)")]
    Unreachable { url: String, reason: String },
    #[error(
        "the sharder refused the admin token ({status}); use the configuration with its \
         sharder.admin_token"
    )]
    Unauthorized { status: u16 },
    #[error("reshard refused ({status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error(
        "the reshard to {to} shards ended without it: the running total is {total}; see the sharder's log"
    )]
    NotCompleted { to: u32, total: u64 },
    #[error("unexpected answer from {url}: {reason}")]
    Answer { url: String, reason: String },
}

/// The admin URL for a sharder listening on `listen`: its own address, or
/// loopback when it listens on every interface.
pub fn admin_url(listen: SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        listen.ip()
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// Runs the command, writing what it does to `out`.
pub async fn reshard_command(
    resolver: &dnscache::Resolver,
    cli: &ReshardCli,
    out: &mut impl Write,
) -> Result<(), ReshardCliError> {
    let mut waiting_for = None;
    if let Some(total) = cli.total {
        let v = request_reshard(
            resolver,
            &cli.url,
            &cli.admin_token,
            total,
            cli.force_shrink,
        )
        .await?;
        let _ = writeln!(
            out,
            "reshard {} -> {} shards started: {} identifies, cold-boot floor {:.0} s, {} session starts left after",
            v["from"],
            v["to"],
            v["identifies"],
            v["cold_boot_floor_s"].as_f64().unwrap_or(0.0),
            v["session_starts_after"]
        );
        waiting_for = Some(total);
    }
    loop {
        let v = reshard_status(resolver, &cli.url, &cli.admin_token).await?;
        let line = progress_line(&v);
        let _ = writeln!(out, "{line}");
        let running = !v["reshard"].is_null();
        if !cli.wait || !running {
            if let Some(to) = waiting_for.filter(|_| cli.wait) {
                let total = v["total"].as_u64().unwrap_or(0);
                if total != u64::from(to) {
                    return Err(ReshardCliError::NotCompleted { to, total });
                }
            }
            return Ok(());
        }
        tokio::time::sleep(cli.every).await;
    }
}

/// One line of `GET /admin/reshard`.
pub fn progress_line(v: &serde_json::Value) -> String {
    let r = &v["reshard"];
    if r.is_null() {
        return format!("running {} shards, no reshard in progress", v["total"]);
    }
    let mut line = format!(
        "{:>6.1} s  {} -> {} shards  new shards loaded {}/{} (this pod)  floor {:.0} s",
        r["seconds"].as_f64().unwrap_or(0.0),
        r["from"],
        r["to"],
        r["new_shards_loaded"],
        r["new_shards"],
        r["floor_seconds"].as_f64().unwrap_or(0.0),
    );
    let c = &r["cluster"];
    if !c.is_null() {
        let stage = if c["committed"] == true {
            "handing over"
        } else if !c["aborted"].is_null() {
            "aborting"
        } else {
            "loading"
        };
        line.push_str(&format!(
            "  pods loaded {}/{}  {stage}",
            c["loaded"], c["processes"]
        ));
    }
    line
}

/// `POST /admin/reshard` on the sharder at `url`: the plan it answered.
pub async fn request_reshard(
    resolver: &dnscache::Resolver,
    url: &str,
    admin_token: &Secret,
    total: u32,
    force_shrink: bool,
) -> Result<serde_json::Value, ReshardCliError> {
    let body = serde_json::json!({ "total": total, "force_shrink": force_shrink });
    let (status, v) = exchange(resolver, url, admin_token, "POST", body.to_string()).await?;
    if status != 202 {
        let reason = v["error"].as_str().unwrap_or("no reason given").to_owned();
        return Err(ReshardCliError::Refused { status, reason });
    }
    Ok(v)
}

/// `GET /admin/reshard` on the sharder at `url`: the running total and the
/// reshard in progress, if any.
pub async fn reshard_status(
    resolver: &dnscache::Resolver,
    url: &str,
    admin_token: &Secret,
) -> Result<serde_json::Value, ReshardCliError> {
    let (status, v) = exchange(resolver, url, admin_token, "GET", String::new()).await?;
    if status != 200 {
        return Err(ReshardCliError::Answer {
            url: url.to_owned(),
            reason: format!("GET /admin/reshard answered {status}"),
        });
    }
    Ok(v)
}

async fn exchange(
    resolver: &dnscache::Resolver,
    base: &str,
    admin_token: &Secret,
    method: &str,
    body: String,
) -> Result<(u16, serde_json::Value), ReshardCliError> {
    let url = format!("{}/admin/reshard", base.trim_end_matches('/'));
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(&url)
        .header("content-type", "application/json");
    if !admin_token.expose().is_empty() {
        request = request.header("authorization", format!("Bearer {}", admin_token.expose()));
    }
    let request =
        request
            .body(bytes::Bytes::from(body))
            .map_err(|e| ReshardCliError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
    let response = resolver
        .http_request(request, Duration::from_secs(30))
        .await
        .map_err(|e| ReshardCliError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let status = response.status().as_u16();
    if status == 401 || status == 403 {
        return Err(ReshardCliError::Unauthorized { status });
    }
    let v = serde_json::from_slice(response.body()).map_err(|e| ReshardCliError::Answer {
        url,
        reason: format!("{status}, not JSON: {e}"),
    })?;
    Ok((status, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_of_a_listener_on_every_interface_is_loopback() {
        assert_eq!(
            admin_url("0.0.0.0:8080".parse().unwrap_or_else(|_| unreachable!())),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            admin_url("10.0.0.7:9000".parse().unwrap_or_else(|_| unreachable!())),
            "http://10.0.0.7:9000"
        );
    }

    #[test]
    fn a_progress_line_says_where_the_reshard_is() {
        let idle = serde_json::json!({"total": 8, "reshard": null});
        assert_eq!(
            progress_line(&idle),
            "running 8 shards, no reshard in progress"
        );
        let running = serde_json::json!({"total": 4, "reshard": {
            "from": 4, "to": 8, "seconds": 3.3, "new_shards": 4, "new_shards_loaded": 1,
            "floor_seconds": 2.4,
            "cluster": {"processes": 2, "loaded": 1, "committed": false, "aborted": null}
        }});
        assert_eq!(
            progress_line(&running),
            "   3.3 s  4 -> 8 shards  new shards loaded 1/4 (this pod)  floor 2 s  pods loaded 1/2  loading"
        );
    }
}
