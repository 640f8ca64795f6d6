//! The wasmtime engine every sensor runs on: configuration, the host's one import (`log`), the
//! epoch ticker that enforces per-call CPU and wall-clock limits, and the compiled-code cache.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};

use super::bindings::{self, wit, Contract};
use super::limits::SandboxLimits;

/// Why a call was stopped by the host (carried inside the trap error).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    #[error("CPU budget of {0:?} per call exceeded")]
    Cpu(Duration),
    #[error("wall-clock timeout of {0:?} per call exceeded")]
    Wall(Duration),
}

/// The data of one sensor instance's store.
pub struct SensorState {
    sensor: Arc<str>,
    limits: StoreLimits,
    call_wall_start: Instant,
    call_cpu_start: Duration,
    cpu_budget: Duration,
    wall_budget: Duration,
    log_tokens: f64,
    log_rate: f64,
    log_refilled: Instant,
    log_dropped: u64,
}

impl SensorState {
    fn new(sensor: Arc<str>, limits: &SandboxLimits) -> Self {
        let now = Instant::now();
        Self {
            sensor,
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .table_elements(100_000)
                .instances(16)
                .memories(4)
                .tables(8)
                .trap_on_grow_failure(true)
                .build(),
            call_wall_start: now,
            call_cpu_start: Duration::ZERO,
            cpu_budget: limits.cpu_per_call,
            wall_budget: limits.wall_per_call,
            log_tokens: f64::from(limits.log_lines_per_sec),
            log_rate: f64::from(limits.log_lines_per_sec),
            log_refilled: now,
            log_dropped: 0,
        }
    }

    /// Marks the start of a call: the budgets are measured from here.
    pub fn begin_call(&mut self) {
        self.call_wall_start = Instant::now();
        self.call_cpu_start = thread_cpu_time();
    }

    fn check_budgets(&self) -> Result<(), LimitExceeded> {
        if thread_cpu_time().saturating_sub(self.call_cpu_start) > self.cpu_budget {
            return Err(LimitExceeded::Cpu(self.cpu_budget));
        }
        if self.call_wall_start.elapsed() > self.wall_budget {
            return Err(LimitExceeded::Wall(self.wall_budget));
        }
        Ok(())
    }
}

fn thread_cpu_time() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

impl bindings::v0_1::zerostep::sensor::host::Host for SensorState {
    fn log(&mut self, level: wit::LogLevel, message: String) {
        let now = Instant::now();
        let refill = now.duration_since(self.log_refilled).as_secs_f64() * self.log_rate;
        self.log_tokens = (self.log_tokens + refill).min(self.log_rate);
        self.log_refilled = now;
        if self.log_tokens < 1.0 {
            self.log_dropped += 1;
            return;
        }
        self.log_tokens -= 1.0;
        let mut message = message;
        if message.len() > 1024 {
            let mut cut = 1024;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let sensor = &*self.sensor;
        let dropped = std::mem::take(&mut self.log_dropped);
        match level {
            wit::LogLevel::Trace => tracing::trace!(sensor, dropped, "{message}"),
            wit::LogLevel::Debug => tracing::debug!(sensor, dropped, "{message}"),
            wit::LogLevel::Info => tracing::info!(sensor, dropped, "{message}"),
            wit::LogLevel::Warn => tracing::warn!(sensor, dropped, "{message}"),
            wit::LogLevel::Error => tracing::error!(sensor, dropped, "{message}"),
        }
    }
}

impl bindings::v0_1::zerostep::sensor::types::Host for SensorState {}
impl bindings::v0_2::zerostep::sensor0_2_0::types::Host for SensorState {}

/// Advances the engine's epoch while any call is in flight, and sleeps otherwise, so that an idle
/// agent costs no wake-ups.
struct Ticker {
    in_flight: AtomicUsize,
    stop: AtomicBool,
    thread: Thread,
}

/// Held for the duration of one sensor call.
pub struct CallGuard<'a>(&'a Ticker);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Imports a sensor of contract `contract` may have. Everything else (filesystem, sockets, clocks,
/// random, HTTP, ...) is refused at load time.
fn import_allowed(contract: Contract, name: &str) -> bool {
    if name.starts_with("zerostep:sensor/") {
        return contract.import_allowed(name);
    }
    // A std wasip2 guest imports these even when it uses none; they are satisfied by traps.
    [
        "wasi:io/",
        "wasi:cli/environment",
        "wasi:cli/exit",
        "wasi:cli/stdin",
        "wasi:cli/stdout",
        "wasi:cli/stderr",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || name.starts_with("wasi:cli/terminal-")
}

pub struct SandboxEngine {
    engine: Engine,
    /// One linker per contract version: each has that version's host interfaces.
    linker_v0_1: Linker<SensorState>,
    linker_v0_2: Linker<SensorState>,
    limits: SandboxLimits,
    ticker: Arc<Ticker>,
    ticker_thread: Option<JoinHandle<()>>,
    cache: Option<CompiledCache>,
}

impl SandboxEngine {
    /// `cache_dir`: where compiled code may be kept between runs (None: compile every time).
    pub fn new(limits: SandboxLimits, cache_dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(512 << 10);
        // wasmtime's default 4 GiB reservation with guard pages is kept on purpose: address space
        // is cheap on x86_64, and it lets compiled code skip explicit bounds checks. The memory cap
        // is enforced by StoreLimits, not by the reservation.
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
        let mut linker_v0_1 = Linker::new(&engine);
        bindings::v0_1::Sensor::add_to_linker::<SensorState, HasSelf<SensorState>>(
            &mut linker_v0_1,
            |s| s,
        )
        .map_err(anyhow::Error::from)?;
        let mut linker_v0_2 = Linker::new(&engine);
        bindings::v0_2::Sensor::add_to_linker::<SensorState, HasSelf<SensorState>>(
            &mut linker_v0_2,
            |s| s,
        )
        .map_err(anyhow::Error::from)?;

        let ticker_engine = engine.clone();
        let tick = limits.tick;
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Ticker>>();
        let ticker_thread =
            thread::Builder::new()
                .name("sensor-epoch".into())
                .spawn(move || {
                    let Ok(ticker) = rx.recv() else { return };
                    while !ticker.stop.load(Ordering::Acquire) {
                        if ticker.in_flight.load(Ordering::Acquire) == 0 {
                            thread::park_timeout(Duration::from_secs(1));
                        } else {
                            thread::sleep(tick);
                            ticker_engine.increment_epoch();
                        }
                    }
                })?;
        let ticker = Arc::new(Ticker {
            in_flight: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            thread: ticker_thread.thread().clone(),
        });
        let _ = tx.send(ticker.clone());

        let cache = match cache_dir {
            Some(dir) => match CompiledCache::open(dir, &engine) {
                Ok(c) => Some(c),
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "compiled-sensor cache disabled");
                    None
                }
            },
            None => None,
        };
        Ok(Self {
            engine,
            linker_v0_1,
            linker_v0_2,
            limits,
            ticker,
            ticker_thread: Some(ticker_thread),
            cache,
        })
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Compiles (or takes from the cache) a component.
    pub fn compile(&self, bytes: &[u8], sha256: &str) -> anyhow::Result<Component> {
        if let Some(cache) = &self.cache {
            if let Some(component) = cache.load(&self.engine, sha256) {
                return Ok(component);
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(anyhow::Error::from)?;
        if let Some(cache) = &self.cache {
            cache.store(&component, sha256);
        }
        Ok(component)
    }

    /// The names of everything the component imports.
    pub fn imports(&self, component: &Component) -> Vec<String> {
        component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// The first import the component has that the sandbox does not allow for its contract.
    pub fn forbidden_import(&self, component: &Component, contract: Contract) -> Option<String> {
        self.imports(component)
            .into_iter()
            .find(|name| !import_allowed(contract, name))
    }

    /// Whether an import outside the contract is one the sandbox refuses.
    pub fn forbidden_import_name(&self, name: &str) -> bool {
        // Any contract: the non-contract part of the check is the same for all.
        !import_allowed(Contract::V0_1, name)
    }

    /// A linker for this component: its contract's host imports, and traps for the unused WASI ones.
    pub fn linker_for(
        &self,
        component: &Component,
        contract: Contract,
    ) -> anyhow::Result<Linker<SensorState>> {
        let mut linker = match contract {
            Contract::V0_1 => self.linker_v0_1.clone(),
            Contract::V0_2 => self.linker_v0_2.clone(),
        };
        linker
            .define_unknown_imports_as_traps(component)
            .map_err(anyhow::Error::from)?;
        Ok(linker)
    }

    pub fn new_store(&self, sensor: Arc<str>) -> Store<SensorState> {
        let mut store = Store::new(&self.engine, SensorState::new(sensor, &self.limits));
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|ctx| match ctx.data().check_budgets() {
            Ok(()) => Ok(UpdateDeadline::Continue(1)),
            Err(exceeded) => Err(wasmtime::Error::new(exceeded)),
        });
        store
    }

    pub fn enter_call(&self) -> CallGuard<'_> {
        if self.ticker.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.ticker.thread.unpark();
        }
        CallGuard(&self.ticker)
    }
}

impl Drop for SandboxEngine {
    fn drop(&mut self) {
        self.ticker.stop.store(true, Ordering::Release);
        self.ticker.thread.unpark();
        if let Some(t) = self.ticker_thread.take() {
            let _ = t.join();
        }
    }
}

/// Compiled components on disk, each authenticated with an HMAC under a key only this host holds,
/// so that code this host did not produce is never deserialised.
struct CompiledCache {
    dir: PathBuf,
    key: Vec<u8>,
    engine_tag: String,
}

type HmacSha256 = Hmac<Sha256>;

impl CompiledCache {
    fn open(dir: &Path, engine: &Engine) -> anyhow::Result<Self> {
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let key_path = dir.join("cache.key");
        let key = match std::fs::read(&key_path) {
            Ok(k) if k.len() == 32 => k,
            _ => {
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k).map_err(|e| anyhow::anyhow!("random key: {e}"))?;
                let tmp = dir.join(".cache.key.tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                std::io::Write::write_all(&mut f, &k)?;
                std::fs::rename(&tmp, &key_path)?;
                k
            }
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            engine_tag: format!("{:016x}", h.finish()),
        })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_tag))
    }

    fn mac(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut mac = HmacSha256::new_from_slice(&self.key).ok()?;
        mac.update(bytes);
        Some(mac.finalize().into_bytes().to_vec())
    }

    fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let data = std::fs::read(self.path(sha256)).ok()?;
        if data.len() < 32 {
            return None;
        }
        let (tag, code) = data.split_at(32);
        let mut mac = HmacSha256::new_from_slice(&self.key).ok()?;
        mac.update(code);
        if mac.verify_slice(tag).is_err() {
            tracing::warn!(
                sha256,
                "compiled-sensor cache entry fails its HMAC; ignoring it"
            );
            return None;
        }
        // SAFETY: the bytes carry an HMAC under this host's private key, so they are exactly what
        // `Component::serialize` of this host produced; `deserialize` also checks engine compatibility.
        unsafe { Component::deserialize(engine, code) }.ok()
    }

    fn store(&self, component: &Component, sha256: &str) {
        let Ok(code) = component.serialize() else {
            return;
        };
        let Some(tag) = self.mac(&code) else { return };
        let tmp = self.dir.join(format!(".{sha256}.tmp"));
        let result = (|| -> std::io::Result<()> {
            let mut data = tag;
            data.extend_from_slice(&code);
            std::fs::write(&tmp, &data)?;
            std::fs::rename(&tmp, self.path(sha256))
        })();
        if let Err(err) = result {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(error = %err, "compiled-sensor cache write failed (continuing without)");
        }
    }
}
