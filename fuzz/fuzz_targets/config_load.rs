//! The configuration loader on any file text and any `BULWARK_*`
//! environment overrides. Input layout: the TOML text, then NUL-separated
//! `KEY=VALUE` pairs whose keys get the `BULWARK_` prefix.
#![no_main]

use config::{Config, SharderConfig, redact_url};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let env: Vec<(String, String)> = parts
        .map(|p| {
            let p = String::from_utf8_lossy(p);
            let (k, v) = p.split_once('=').unwrap_or((&p, ""));
            (format!("BULWARK_{k}"), v.to_owned())
        })
        .collect();
    let _ = SharderConfig::toml_sets_process_index(&text);
    let _ = redact_url(&text);
    if let Ok(c) = Config::from_toml_str(&text, "fuzz", env) {
        c.validate().expect("a loaded config stays valid");
        let _ = redact_url(c.amqp.url.expose());
        let _ = format!("{c:?}");
    }
});
