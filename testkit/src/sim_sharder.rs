//! A sharder configured against a running simulator: every shard in this
//! process, HTTP on a free loopback port, sessions in a test's directory,
//! the simulator's token in the environment, as the end-to-end tests of
//! the sharder and the worker start it.

use discord_sim::SimHandle;
use std::path::Path;

/// GUILDS, GUILD_MESSAGES and MESSAGE_CONTENT: the sharder's own tests.
pub const MESSAGE_INTENTS: u64 = (1 << 0) | (1 << 9) | (1 << 11);
/// GUILDS, GUILD_MEMBERS and GUILD_MESSAGES: what a cache needs.
pub const CACHE_INTENTS: u64 = (1 << 0) | (1 << 1) | (1 << 9);

/// How a test's sharder differs from the usual one.
#[derive(Debug, Clone, Copy)]
pub struct SharderShape<'a> {
    /// The gateway intents.
    pub intents: u64,
    /// `sharder.shutdown_grace`, e.g. `"5s"`.
    pub shutdown_grace: &'a str,
    /// More configuration, appended after the `[sharder]` keys (more
    /// `[sharder]` keys first, then other sections).
    pub extra: &'a str,
}

/// The configuration of a sharder running every shard of `sim`, with its
/// sessions in `session_dir`.
pub fn sharder_config(
    sim: &SimHandle,
    session_dir: &Path,
    shape: SharderShape<'_>,
) -> Result<config::Config, config::ConfigError> {
    let toml = format!(
        "[discord]\napi_base = \"{api}/api/v10\"\nintents = {intents}\n\
         [sharder]\ntotal_shards = {shards}\ngateway_url = \"{gw}\"\n\
         http_listen = \"127.0.0.1:0\"\nsession_dir = \"{dir}\"\n\
         persist_interval = \"100ms\"\nshutdown_grace = \"{grace}\"\n{extra}",
        api = sim.http_url(),
        intents = shape.intents,
        shards = sim.config().shards,
        gw = sim.gateway_url(),
        dir = session_dir.display(),
        grace = shape.shutdown_grace,
        extra = shape.extra,
    );
    config::Config::from_toml_str(
        &toml,
        "test",
        vec![("BULWARK_DISCORD__TOKEN".into(), sim.config().token.clone())],
    )
}
