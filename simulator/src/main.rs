//! `discord-sim`: run the Discord gateway simulator as a process, for demos
//! and for testing clients in other languages or other processes.
//!
//! On the start-up every Bulwark binary shares (`bulwark_process`): a bad
//! flag value exits 78, SIGTERM or SIGINT shuts the simulator down (exit 0).
#![forbid(unsafe_code)]

use bulwark_process::{EXIT_FAILURE, Failure, LogTo};
use clap::Parser;
use config::EXIT_CONFIG;
use discord_sim::{EventMix, PRIVILEGED_INTENTS, SimConfig, SimError, Simulator};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// A faithful Discord gateway v10 simulator: HTTP `/api/v10/gateway/bot`,
/// the websocket gateway (JSON, zlib-stream, zstd-stream), Discord's rate
/// limits and close codes, fault injection and ground truth under `/sim/`.
#[derive(Debug, Parser)]
#[command(name = "discord-sim", version)]
struct Args {
    /// Address to listen on (loopback only); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Bot token clients must present.
    #[arg(
        long,
        env = "DISCORD_SIM_TOKEN",
        default_value = "sim-token",
        hide_env_values = true
    )]
    token: String,
    /// Shard count: the world's, recommended by /gateway/bot at start
    /// (POST /sim/recommended_shards changes it), and the least total IDENTIFY
    /// may use unless --guild-cap is given (larger totals are accepted).
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// Most guilds one shard may own (Discord: 2500): IDENTIFY of a shard
    /// owning more, or a session whose shard a join takes over it, is
    /// closed with 4011. Replaces --shards as the least total. Default: no cap.
    #[arg(long)]
    guild_cap: Option<u32>,
    /// Guilds at start, spread evenly over the shards (at most 2500 per shard).
    #[arg(long, default_value_t = 10)]
    guilds: u32,
    /// Channels per generated guild (at least 2).
    #[arg(long, default_value_t = 8)]
    channels_per_guild: u32,
    /// Roles per generated guild, besides @everyone.
    #[arg(long, default_value_t = 5)]
    roles_per_guild: u32,
    /// Members per generated guild (at least 1).
    #[arg(long, default_value_t = 25)]
    members_per_guild: u32,
    /// Event mix as NAME=WEIGHT,... (names: MESSAGE_CREATE, TYPING_START,
    /// PRESENCE_UPDATE, GUILD_MEMBER_ADD/UPDATE/REMOVE, CHANNEL_CREATE/UPDATE/DELETE,
    /// GUILD_ROLE_CREATE/UPDATE/DELETE, GUILD_UPDATE, GUILD_JOIN, GUILD_OUTAGE,
    /// GUILD_REMOVE); unnamed kinds get 0. Default: a realistic mix.
    #[arg(long)]
    event_mix: Option<EventMix>,
    /// Dispatches an automatic outage (GUILD_OUTAGE) lasts before the guild returns.
    #[arg(long, default_value_t = 200)]
    outage_events: u64,
    /// Seed of the world and of the event content.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Dispatch events per second across all shards (0 = none).
    #[arg(long, default_value_t = 50.0)]
    event_rate: f64,
    /// session_start_limit.max_concurrency: identify buckets (shard_id % C).
    #[arg(long, default_value_t = 1)]
    max_concurrency: u32,
    /// Each identify bucket admits one IDENTIFY per this many ms (Discord: 5000).
    #[arg(long, default_value_t = 5000)]
    identify_window_ms: u64,
    /// session_start_limit.total (and initial remaining).
    #[arg(long, default_value_t = 1000)]
    session_start_total: u32,
    /// Milliseconds until the session start budget resets (Discord: 24 h).
    #[arg(long, default_value_t = 86_400_000)]
    session_start_reset_ms: u64,
    /// HELLO's heartbeat_interval in ms; no heartbeat for 1.5 intervals closes with 4009.
    #[arg(long, default_value_t = 41_250)]
    heartbeat_ms: u64,
    /// Commands a connection may send per send window (Discord: 120); more closes with 4008.
    #[arg(long, default_value_t = 120)]
    send_limit: u32,
    /// The send-limit window in ms (Discord: 60000).
    #[arg(long, default_value_t = 60_000)]
    send_window_ms: u64,
    /// Milliseconds a session stays resumable after its connection drops.
    #[arg(long, default_value_t = 180_000)]
    session_expiry_ms: u64,
    /// Dispatches kept per session for RESUME.
    #[arg(long, default_value_t = 10_000)]
    replay_buffer: usize,
    /// Privileged intents the bot may use: comma list of GUILD_MEMBERS,
    /// GUILD_PRESENCES, MESSAGE_CONTENT, or "none". Others get 4014.
    #[arg(long, default_value = "GUILD_MEMBERS,GUILD_PRESENCES,MESSAGE_CONTENT")]
    allowed_privileged_intents: String,
}

fn privileged(list: &str) -> Result<u64, SimError> {
    let mut bits = 0;
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        bits |= match name.to_ascii_uppercase().as_str() {
            "NONE" => 0,
            "GUILD_MEMBERS" => 1 << 1,
            "GUILD_PRESENCES" => 1 << 8,
            "MESSAGE_CONTENT" => 1 << 15,
            other => {
                return Err(SimError::Config {
                    key: "allowed_privileged_intents".into(),
                    message: format!(
                        "unknown intent {other}; use GUILD_MEMBERS, GUILD_PRESENCES, \
                         MESSAGE_CONTENT or none"
                    ),
                });
            }
        };
    }
    Ok(bits & PRIVILEGED_INTENTS)
}

fn config(a: Args) -> Result<SimConfig, SimError> {
    let d = SimConfig::default();
    Ok(SimConfig {
        listen: a.listen,
        token: a.token,
        shards: a.shards,
        guild_cap: a.guild_cap,
        guilds: a.guilds,
        channels_per_guild: a.channels_per_guild,
        roles_per_guild: a.roles_per_guild,
        members_per_guild: a.members_per_guild,
        event_mix: a.event_mix.unwrap_or(d.event_mix),
        outage_events: a.outage_events,
        seed: a.seed,
        event_rate: a.event_rate,
        max_concurrency: a.max_concurrency,
        identify_window: Duration::from_millis(a.identify_window_ms),
        session_start_total: a.session_start_total,
        session_start_reset: Duration::from_millis(a.session_start_reset_ms),
        heartbeat_interval: Duration::from_millis(a.heartbeat_ms),
        send_limit: a.send_limit,
        send_window: Duration::from_millis(a.send_window_ms),
        session_expiry: Duration::from_millis(a.session_expiry_ms),
        replay_buffer: a.replay_buffer,
        allowed_privileged_intents: privileged(&a.allowed_privileged_intents)?,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    bulwark_process::init_logging("info", LogTo::Stdout);
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn serve(args: Args) -> Result<(), Failure> {
    let bad_setting = |e: SimError| Failure::from_error(EXIT_CONFIG, "discord-sim", &e);
    let cfg = config(args)
        .and_then(|c| c.validate().map(|()| c))
        .map_err(bad_setting)?;
    bulwark_process::run_until_signal(|shutdown| async move {
        let sim = match Simulator::start(cfg).await {
            Ok(s) => s,
            Err(e @ SimError::Config { .. }) => return Err(bad_setting(e)),
            Err(e) => {
                return Err(Failure::from_error(
                    EXIT_FAILURE,
                    "discord-sim: cannot start the simulator",
                    &e,
                ));
            }
        };
        println!(
            "discord-sim listening: gateway {} resume {} http {}",
            sim.gateway_url(),
            sim.resume_url(),
            sim.http_url()
        );
        shutdown.cancelled().await;
        sim.shutdown().await;
        Ok(())
    })?
}
