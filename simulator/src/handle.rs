//! Starting a simulator and controlling it while it runs.
//!
//! Tests embed the simulator in-process: [`Simulator::start`] binds, spawns
//! the server and the event generator on the current tokio runtime, and
//! returns a [`SimHandle`] with the URLs, the ground truth, and the same
//! fault injection the HTTP control API offers.

use crate::config::{SimConfig, check_positive_rate};
use crate::error::SimError;
use crate::gateway::records::{Counters, Ledger};
use crate::gateway::sessions::{Control, Core, Malformed, Target};
use crate::gateway::{Shared, generator, http};
use crate::world::{EventMix, Truth, World};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Entry point: see [`Simulator::start`].
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Validates `cfg`, builds the world, binds `cfg.listen` and starts
    /// serving on the current tokio runtime.
    pub async fn start(cfg: SimConfig) -> Result<SimHandle, SimError> {
        cfg.validate()?;
        let world = World::new(cfg.seed, cfg.world_config())?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let core = Core::new(&cfg, world, std::time::Instant::now());
        let shared = Arc::new(Shared::new(cfg, addr, core));
        let generator = tokio::spawn(generator::run(shared.clone()));
        let server = tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::info!(%addr, "discord-sim listening");
        Ok(SimHandle {
            shared,
            tasks: vec![server, generator],
        })
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let (stream, peer) = tokio::select! {
            _ = crate::gateway::stopped(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| http::handle(req, shared.clone()));
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}

/// A running simulator. Dropping it does not stop it; call
/// [`SimHandle::shutdown`].
#[derive(Debug)]
pub struct SimHandle {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimHandle {
    /// The bound address (127.0.0.1 and the actual port).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `ws://127.0.0.1:PORT`, the URL `/gateway/bot` returns. Append
    /// `/?v=10&encoding=json[&compress=...]` as for Discord.
    pub fn gateway_url(&self) -> String {
        self.shared.gateway_url()
    }

    /// `ws://127.0.0.1:PORT/resume`, READY's `resume_gateway_url`.
    pub fn resume_url(&self) -> String {
        self.shared.resume_url()
    }

    /// `http://127.0.0.1:PORT`, the base of `/api/v10/...` and `/sim/...`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The configuration the simulator runs with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// The exact state a perfect cache holds now.
    pub fn truth(&self) -> Truth {
        self.shared.core().world.truth()
    }

    /// Every dispatch assigned to every session so far.
    pub fn ledger(&self) -> Ledger {
        self.shared.core().ledger.snapshot()
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.shared.core().counters.clone()
    }

    /// How many sessions on `shards` (all when empty), of any shard total,
    /// currently have a connection attached. Every method below that takes
    /// `shards` means those shard ids in every connected total.
    pub fn connected_sessions(&self, shards: &[u32]) -> usize {
        self.shared.core().attached(Target::shards(shards))
    }

    /// How many sessions on `shards` (all when empty) of the shard total
    /// `total` currently have a connection attached.
    pub fn connected_sessions_of(&self, total: u32, shards: &[u32]) -> usize {
        self.shared.core().attached(Target::of(total, shards))
    }

    /// The shard totals with at least one session (attached or still
    /// resumable), ascending: two while a reshard runs both generations.
    pub fn connected_totals(&self) -> Vec<u32> {
        self.shared.core().totals()
    }

    /// Sends RECONNECT (op 7) on `shards` (all when empty). Returns how many
    /// connections got it. The same holds for the other fault methods.
    pub fn reconnect(&self, shards: &[u32]) -> usize {
        self.control(Target::shards(shards), Control::Reconnect)
    }

    /// Drops the connections of `shards` without a close frame; their
    /// sessions stay resumable.
    pub fn drop_connections(&self, shards: &[u32]) -> usize {
        self.control(Target::shards(shards), Control::Drop)
    }

    /// [`SimHandle::drop_connections`] for the sessions of `total` only.
    pub fn drop_connections_of(&self, total: u32, shards: &[u32]) -> usize {
        self.control(Target::of(total, shards), Control::Drop)
    }

    /// Stops ACKing heartbeats on the current connections of `shards`
    /// (they become zombies; the client should notice and resume).
    pub fn zombie(&self, shards: &[u32]) -> usize {
        self.control(Target::shards(shards), Control::Zombie)
    }

    /// Sends one malformed message to `shards` (see [`Malformed`]).
    pub fn malformed(&self, shards: &[u32], kind: Malformed) -> usize {
        self.shared
            .core()
            .malformed(Target::shards(shards), kind, &self.shared.cfg)
    }

    /// Sends a server heartbeat request (op 1) to `shards`; the client must
    /// answer with a heartbeat at once.
    pub fn request_heartbeat(&self, shards: &[u32]) -> usize {
        self.control(Target::shards(shards), Control::RequestHeartbeat)
    }

    /// Sends INVALID_SESSION (op 9) with `d: resumable` to `shards`.
    pub fn invalid_session(&self, shards: &[u32], resumable: bool) -> usize {
        self.control(Target::shards(shards), Control::InvalidSession(resumable))
    }

    fn control(&self, target: Target<'_>, ctl: Control) -> usize {
        self.shared.core().control(target, ctl)
    }

    /// The shard total `GET /api/v10/gateway/bot` recommends now.
    pub fn recommended_shards(&self) -> u32 {
        self.shared.recommended_shards()
    }

    /// Changes the shard total `GET /api/v10/gateway/bot` recommends, as
    /// Discord raises it while a bot grows (`POST /sim/recommended_shards`).
    /// It does not change which totals IDENTIFY accepts (see
    /// [`SimConfig::guild_cap`]). Errors for 0 or a total over
    /// [`crate::MAX_SHARD_TOTAL`].
    pub fn set_recommended_shards(&self, shards: u32) -> Result<(), SimError> {
        self.shared.set_recommended_shards(shards)
    }

    /// Sets the misbehaviours kept up on every connection from now on
    /// (`POST /sim/faults/hostile`).
    pub fn set_hostility(&self, hostility: crate::Hostility) {
        self.shared.core_urgent().hostility = hostility;
    }

    /// Starts an outage of `guild_id` (GUILD_DELETE `unavailable:true`) that
    /// lasts until [`SimHandle::restore`]. False when unknown or already out.
    pub fn outage(&self, guild_id: u64) -> bool {
        outage(&self.shared, guild_id)
    }

    /// Ends an outage (GUILD_CREATE). False when unknown or not out.
    pub fn restore(&self, guild_id: u64) -> bool {
        restore(&self.shared, guild_id)
    }

    /// Changes the dispatch rate (events per second across all shards).
    pub fn set_event_rate(&self, events_per_sec: f64) -> Result<(), SimError> {
        set_rate(&self.shared, events_per_sec)
    }

    /// Changes the event mix.
    pub fn set_event_mix(&self, mix: EventMix) -> Result<(), SimError> {
        self.shared.core().world.set_mix(mix)
    }

    /// Produces `n` dispatches right now, independent of the rate (for
    /// tests that want an exact number of events).
    pub fn emit(&self, n: u64) {
        emit_now(&self.shared, n);
    }

    /// Stops accepting, closes every connection (code 4000, resumable, as a
    /// Discord node going away would) and stops the generator.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

pub(crate) fn outage(shared: &Shared, guild_id: u64) -> bool {
    let mut core = shared.core();
    match core.world.start_outage(guild_id) {
        Some(d) => {
            core.deliver(&d, &shared.cfg);
            true
        }
        None => false,
    }
}

pub(crate) fn restore(shared: &Shared, guild_id: u64) -> bool {
    let mut core = shared.core();
    match core.world.end_outage(guild_id) {
        Some(d) => {
            core.deliver(&d, &shared.cfg);
            true
        }
        None => false,
    }
}

pub(crate) fn set_rate(shared: &Shared, rate: f64) -> Result<(), SimError> {
    check_positive_rate(rate)?;
    shared.set_event_rate(rate);
    Ok(())
}

pub(crate) fn emit_now(shared: &Shared, n: u64) {
    generator::emit(shared, n);
}
