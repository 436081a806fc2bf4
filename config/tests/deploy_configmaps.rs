//! The Kubernetes manifests under `deploy/` and this crate must not drift
//! apart: every TOML file a ConfigMap is generated from must load and
//! validate with the environment overrides the manifests set (the sharder's
//! for every pod of the StatefulSet, its process count from the replica
//! count); the sharder's and the worker's file must agree on what both
//! read; the manifests may set only overrides this test knows; and no
//! committed TOML may hold a secret.
//!
//! (Rendering and schema checks of the manifests themselves are in
//! `deploy/validate.sh`, which CI runs too.)

use config::{Config, SessionStoreKind};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Files under `dir` whose name ends with `.{ext}`, recursively, sorted.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|x| x == ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `BULWARK_*` variables the manifests set, with values shaped like the
/// real ones (the secrets are placeholders of the right form).
fn manifest_env(process_index: u32, process_count: u32) -> Vec<(String, String)> {
    [
        ("BULWARK_SHARDER__PROCESS_INDEX", process_index.to_string()),
        ("BULWARK_SHARDER__PROCESS_COUNT", process_count.to_string()),
        ("BULWARK_DISCORD__TOKEN", "placeholder.bot.token".to_owned()),
        (
            "BULWARK_AMQP__URL",
            "amqp://user:placeholder@rabbitmq.bulwark.svc.cluster.local:5672/%2f".to_owned(),
        ),
        (
            "BULWARK_REDIS__URL",
            "redis://redis.bulwark.svc.cluster.local:6379/0".to_owned(),
        ),
        (
            "BULWARK_SHARDER__ADMIN_TOKEN",
            "placeholder-admin-token".to_owned(),
        ),
        (
            "BULWARK_WORKER__READ_TOKEN",
            "placeholder-read-token".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn known_vars() -> BTreeSet<String> {
    manifest_env(0, 1).into_iter().map(|(k, _)| k).collect()
}

/// The sharder replica count that goes with the TOML file at `toml`: the
/// overlay's `replicas:` entry for `sharder`, else the base StatefulSet's.
fn sharder_replicas(toml: &Path) -> Option<u32> {
    let dir = toml.parent()?;
    let count_after = |text: &str, marker: &str, key: &str| -> Option<u32> {
        let mut lines = text.lines().skip_while(|l| l.trim() != marker);
        lines.next()?;
        lines
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    let kustomization = read(&dir.join("kustomization.yaml"));
    count_after(&kustomization, "- name: sharder", "count:").or_else(|| {
        let sts = std::fs::read_to_string(dir.join("sharder-statefulset.yaml")).ok()?;
        count_after(&sts, "kind: StatefulSet", "replicas:")
    })
}

/// The TOML files of one binary (`sharder.toml` or `worker.toml`), one per
/// base and overlay.
fn tomls_of(binary: &str) -> Vec<PathBuf> {
    let name = format!("{binary}.toml");
    files(&deploy_dir(), "toml")
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|f| f == name.as_str()))
        .collect()
}

#[test]
fn every_sharder_toml_loads_for_every_sharder_pod() {
    let tomls = tomls_of("sharder");
    assert!(
        tomls.len() >= 3,
        "expected base, dev and production sharder.toml under deploy/, found {tomls:?}"
    );
    for path in &tomls {
        let origin = path.display().to_string();
        let text = read(path);
        let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{origin}: {e}"));
        assert!(
            table
                .get("sharder")
                .and_then(|s| s.as_table())
                .is_none_or(|s| !s.contains_key("process_count")),
            "{origin} sets sharder.process_count: it comes from the StatefulSet's replicas \
             (BULWARK_SHARDER__PROCESS_COUNT), the one place to edit"
        );
        // The file alone is valid (a pod without the Secret fails on the
        // missing token, not on the file).
        Config::from_toml_str(&text, &origin, Vec::new())
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        let count = sharder_replicas(path)
            .unwrap_or_else(|| panic!("{origin}: no sharder replica count next to it"));

        for index in 0..count {
            let cfg = Config::from_toml_str(&text, &origin, manifest_env(index, count))
                .unwrap_or_else(|e| panic!("{origin} as pod {index}: {e}"));
            assert_eq!(cfg.sharder.process_index, index, "{origin}");
            assert_eq!(cfg.sharder.process_count, count, "{origin}");
            assert!(cfg.discord.require_token().is_ok(), "{origin}");
            assert!(
                cfg.redis.enabled(),
                "{origin}: BULWARK_REDIS__URL not applied"
            );
            if cfg.sharder.session_store == SessionStoreKind::File {
                assert!(
                    cfg.sharder.session_dir.is_absolute(),
                    "{origin}: session_dir must be the absolute mount path of the sessions volume"
                );
            }
        }
        // One pod more than process_count must not start with a wrong range.
        let e = Config::from_toml_str(&text, &origin, manifest_env(count, count))
            .expect_err("pod index == process_count accepted")
            .to_string();
        assert!(e.contains("sharder.process_index"), "{origin}: {e}");
    }
}

#[test]
fn every_worker_toml_loads_and_agrees_with_its_sharder_toml() {
    let tomls = tomls_of("worker");
    assert!(
        tomls.len() >= 3,
        "expected base, dev and production worker.toml under deploy/, found {tomls:?}"
    );
    for path in &tomls {
        let origin = path.display().to_string();
        let text = read(path);
        let env: Vec<(String, String)> = manifest_env(0, 1)
            .into_iter()
            .filter(|(k, _)| k.starts_with("BULWARK_AMQP__") || k.starts_with("BULWARK_REDIS__"))
            .collect();
        let cfg = Config::from_toml_str(&text, &origin, env.clone())
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        assert!(cfg.redis.enabled(), "{origin}");
        // The worker's start-up check of its read API, with and without
        // the Secret's token: production must refuse to start without it.
        let with_token = manifest_env(0, 1)
            .into_iter()
            .filter(|(k, _)| k == "BULWARK_WORKER__READ_TOKEN")
            .chain(env);
        let full = Config::from_toml_str(&text, &origin, with_token)
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        full.worker
            .read_token()
            .unwrap_or_else(|e| panic!("{origin} with the Secret's token: {e}"));
        if origin.contains("production") {
            assert!(
                cfg.worker.read_token().is_err(),
                "{origin}: the production worker must not start without worker.read_token"
            );
        }

        let sharder_path = path.with_file_name("sharder.toml");
        let sharder: toml::Table = read(&sharder_path)
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", sharder_path.display()));
        let worker: toml::Table = text.parse().unwrap_or_else(|e| panic!("{origin}: {e}"));
        for section in ["amqp", "redis"] {
            assert_eq!(
                worker.get(section),
                sharder.get(section),
                "{origin}: [{section}] differs from {}; both binaries read it",
                sharder_path.display()
            );
        }
    }
}

#[test]
fn manifests_set_only_known_overrides() {
    let known = known_vars();
    let mut seen = BTreeSet::new();
    for path in files(&deploy_dir(), "yaml") {
        for line in read(&path).lines() {
            let Some(name) = line.trim().trim_start_matches("- ").strip_prefix("name: ") else {
                continue;
            };
            let name = name.trim().trim_matches('"');
            if !name.starts_with(config::ENV_PREFIX) {
                continue;
            }
            assert!(
                known.contains(name),
                "{} sets {name}: every BULWARK_* variable is a config override; \
                 add it to manifest_env() here if it is a real key",
                path.display()
            );
            seen.insert(name.to_owned());
        }
    }
    assert_eq!(
        seen, known,
        "manifest_env() lists variables no manifest sets"
    );
}

/// A string shaped like a Discord bot token: three base64url parts joined
/// by dots, the first and last long.
fn looks_like_token(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && parts[0].len() >= 20
        && parts[2].len() >= 20
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[test]
fn no_secret_in_any_deploy_toml() {
    for path in files(&deploy_dir(), "toml") {
        let origin = path.display().to_string();
        let text = read(&path);
        let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{origin}: {e}"));
        for (section, key) in [
            ("discord", "token"),
            ("amqp", "url"),
            ("redis", "url"),
            ("sharder", "admin_token"),
        ] {
            assert!(
                table
                    .get(section)
                    .and_then(|s| s.as_table())
                    .is_none_or(|s| !s.contains_key(key)),
                "{origin} sets {section}.{key}: it comes from the Secret, never a committed file"
            );
        }
        let mut stack: Vec<(String, &toml::Value)> =
            table.iter().map(|(k, v)| (k.clone(), v)).collect();
        while let Some((key, value)) = stack.pop() {
            let lower = key.to_ascii_lowercase();
            assert!(
                !["token", "password", "passwd", "secret"]
                    .iter()
                    .any(|s| lower.contains(s)),
                "{origin}: key {key} looks like a secret"
            );
            match value {
                toml::Value::Table(t) => {
                    stack.extend(t.iter().map(|(k, v)| (format!("{key}.{k}"), v)));
                }
                toml::Value::Array(a) => stack.extend(a.iter().map(|v| (key.clone(), v))),
                toml::Value::String(s) => {
                    assert!(
                        !(s.contains("://") && s.contains('@')),
                        "{origin}: {key} holds a URL with credentials"
                    );
                }
                _ => {}
            }
        }
        for word in text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            assert!(
                !looks_like_token(word),
                "{origin}: something shaped like a bot token"
            );
        }
    }
}

#[test]
fn token_shape_check_catches_a_token() {
    assert!(looks_like_token(
        "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz0123"
    ));
    assert!(!looks_like_token("bulwark.svc.cluster"));
    assert!(!looks_like_token("\"6h\""));
}

#[test]
fn every_relay_toml_loads_and_agrees_with_its_worker_and_sharder() {
    let tomls = tomls_of("relay");
    assert!(
        tomls.len() >= 3,
        "expected base, dev and production relay.toml under deploy/, found {tomls:?}"
    );
    for path in &tomls {
        let origin = path.display().to_string();
        let text = read(path);
        let env: Vec<(String, String)> = manifest_env(0, 1)
            .into_iter()
            .filter(|(k, _)| {
                k == "BULWARK_DISCORD__TOKEN"
                    || k.starts_with("BULWARK_AMQP__")
                    || k.starts_with("BULWARK_REDIS__")
            })
            .collect();
        let relay = Config::from_toml_str(&text, &origin, env.clone())
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        relay
            .discord
            .require_token()
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        assert!(
            relay.redis.enabled(),
            "{origin}: the relay reads the workers' Redis"
        );
        assert!(
            relay.relay.metrics_listen.is_some(),
            "{origin}: metrics_listen"
        );
        let load = |name: &str| {
            let p = path.with_file_name(name);
            Config::from_toml_str(&read(&p), &p.display().to_string(), env.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let worker = load("worker.toml");
        let sharder = load("sharder.toml");
        assert_eq!(
            relay.amqp, worker.amqp,
            "{origin}: [amqp] differs from worker.toml"
        );
        assert_eq!(
            relay.redis, worker.redis,
            "{origin}: [redis] differs from worker.toml"
        );
        assert_eq!(
            relay.relay.amqp_topology_base, worker.worker.amqp_topology_base,
            "{origin}: the relay must read the workers' output exchange"
        );
        assert_eq!(
            relay.discord.intents, sharder.discord.intents,
            "{origin}: the relay's intents must be the real shards'"
        );
        assert_eq!(
            worker.worker.store,
            config::WorkerStoreKind::Redis,
            "{origin}: the relay needs the Redis store"
        );
        assert!(
            worker.worker.publish_events,
            "{origin}: the workers must publish"
        );
        if origin.contains("production") {
            assert!(relay.tls.ca_file.is_some(), "{origin}: tls.ca_file");
        }
    }
}
