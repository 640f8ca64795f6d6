//! The agent's embedded store: spans (in per-trace chunks), trace summaries, services, the calls
//! between them and per-minute and per-hour rollups in one SQLite file
//! (`<state dir>/zerostep.db`, WAL mode).
//!
//! One writer thread owns the only write connection and is fed through a bounded queue
//! ([`StoreSink`], the pipeline's sink); queries run on separate read-only connections, which WAL
//! lets proceed while the writer commits. Retention by age and size runs on the writer between
//! transactions.
//!
//! A database of an older layout is moved aside (`zerostep.v1.db`, logged at warn) and the store
//! starts empty, rather than migrated: what it holds ages out within the retention period anyway
//! (3 days by default), while a migration would re-encode every span of a file of up to gigabytes
//! before the agent could start, and carry the old decoder forever. Nothing is deleted.
mod analysis;
mod change;
mod chunk;
mod edges;
mod encode;
mod histogram;
mod query;
mod queue;
mod retention;
mod rollup;
mod schema;
mod search;
mod series;
mod tree;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

pub use analysis::{Analysis, ErrorOrigin, SpanShare, TimeBreakdown};
pub use change::{EndpointChange, OperationChange};
pub use encode::{MAX_ATTRIBUTES, MAX_EVENTS, MAX_NAME_BYTES, MAX_VALUE_BYTES};
pub use histogram::Histogram;
pub use query::{
    Culprit, CulpritReason, EdgeSummary, EndpointSummary, RequestStats, ServiceSummary,
    StatusFilter, StoredSpan, TimeRange, TraceDetail, TraceQuery, TraceSummary,
    DEFAULT_TRACE_LIMIT, MAX_TRACE_LIMIT,
};
pub use queue::StoreSink;
pub use retention::RetentionReport;
pub use schema::SCHEMA_VERSION;
pub use search::{AttrFilter, AttrOp, BadAttrFilter, MAX_SCANNED_PARTS};
pub use series::{HistogramBucket, Series, SeriesPoint};
pub use writer::{MAX_ENDPOINTS_PER_SERVICE, OVERFLOW_ENDPOINT};

use queue::Queue;

/// The database file's name inside the state directory.
pub const DB_FILE: &str = "zerostep.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the store was written by a newer zerostep (schema version {found}, this one knows up to \
         {supported}): upgrade the agent or move the database file away"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("the store has schema version {found}, this zerostep writes {supported}")]
    OlderSchema { found: i64, supported: i64 },
    #[error("cannot move the old store {from} aside to {to}: {source}")]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("the database file holds tables that are not zerostep's: refusing to use it")]
    NotOurs,
    #[error("bad trace id {0:?}: expected 32 hex digits")]
    BadTraceId(String),
    #[error("could not start the store writer thread: {0}")]
    Thread(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Spans, traces and rollups older than this are deleted.
    pub retention_age: Duration,
    /// The data is kept under this many bytes by deleting the oldest spans (then rollups).
    pub retention_bytes: u64,
    /// The queue in front of the writer holds at most this many spans; beyond, oldest are dropped.
    pub queue_spans: usize,
    /// The writer commits at least this often when spans are waiting.
    pub commit_interval: Duration,
    /// How often retention runs.
    pub maintenance_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            retention_age: Duration::from_secs(3 * 24 * 3600),
            retention_bytes: 2 << 30,
            queue_spans: 200_000,
            commit_interval: Duration::from_millis(200),
            maintenance_interval: Duration::from_secs(10),
        }
    }
}

pub struct Store {
    path: PathBuf,
    queue: Arc<Queue>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
}

/// A read connection borrowed from the pool, returned on drop.
struct Reader<'a> {
    store: &'a Store,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut pool = self.store.readers.lock();
            if pool.len() < 8 {
                pool.push(conn);
            }
        }
    }
}

impl Store {
    /// Opens (or creates) `dir/zerostep.db` and starts the writer thread.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        let found = schema::version(&conn)?;
        if found > 0 && found < SCHEMA_VERSION {
            // Closing the only connection checkpoints its WAL into the file that is moved.
            drop(conn);
            let moved = schema::move_aside(&path, found)?;
            tracing::warn!(
                old = %moved.display(),
                found,
                current = SCHEMA_VERSION,
                "the store was written by an older zerostep in another layout: moved it aside and \
                 started an empty store (the old file is not used again; delete it when not needed)"
            );
            conn = Connection::open(&path)?;
        }
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::prepare_writer(&conn)?;
        let queue = Arc::new(Queue::new(config.queue_spans));
        let writer = writer::Writer::new(conn, queue.clone(), config);
        let handle = std::thread::Builder::new()
            .name("zerostep-store".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Thread)?;
        Ok(Store {
            path,
            queue,
            writer: Mutex::new(Some(handle)),
            readers: Mutex::new(Vec::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pipeline's handle on this store.
    pub fn sink(&self) -> StoreSink {
        StoreSink {
            queue: self.queue.clone(),
        }
    }

    /// Waits until everything submitted so far is committed (or dropped); false on timeout.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.queue.flush(timeout)
    }

    /// Stops the writer after it has written what is queued. Later submits are dropped (counted).
    pub fn close(&self) {
        self.queue.close();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }

    fn reader(&self) -> Result<Reader<'_>, StoreError> {
        let pooled = self.readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(Duration::from_secs(5))?;
                c.set_prepared_statement_cache_capacity(64);
                schema::prepare_reader(&c)?;
                c
            }
        };
        Ok(Reader {
            store: self,
            conn: Some(conn),
        })
    }

    pub fn services(&self, range: TimeRange) -> Result<Vec<ServiceSummary>, StoreError> {
        query::services(&*self.reader()?, &range)
    }

    pub fn edges(&self, range: TimeRange) -> Result<Vec<EdgeSummary>, StoreError> {
        query::edges(&*self.reader()?, &range)
    }

    pub fn endpoints(
        &self,
        range: TimeRange,
        service: Option<&str>,
    ) -> Result<Vec<EndpointSummary>, StoreError> {
        query::endpoints(&*self.reader()?, &range, service)
    }

    /// Rate, errors and latency per bucket for charts (see `series`).
    pub fn series(
        &self,
        range: TimeRange,
        service: Option<&str>,
        endpoint: Option<&str>,
    ) -> Result<Series, StoreError> {
        series::series(&*self.reader()?, &range, service, endpoint)
    }

    /// How an endpoint's p95 and its child operations' time per request changed from
    /// `baseline` to `range` (see `change`).
    pub fn endpoint_change(
        &self,
        service: &str,
        endpoint: &str,
        range: TimeRange,
        baseline: TimeRange,
    ) -> Result<EndpointChange, StoreError> {
        change::endpoint_change(&*self.reader()?, service, endpoint, &range, &baseline)
    }

    /// Attribute keys the store has seen.
    pub fn attribute_keys(&self) -> Result<Vec<String>, StoreError> {
        Ok(search::known_keys(&*self.reader()?)?)
    }

    pub fn traces(&self, q: &TraceQuery) -> Result<Vec<TraceSummary>, StoreError> {
        query::traces(&*self.reader()?, q)
    }

    /// One trace by its 32-hex-digit id; `Ok(None)` when the store has no span of it.
    pub fn trace(&self, id_hex: &str) -> Result<Option<TraceDetail>, StoreError> {
        let id = encode::parse_trace_id(id_hex)
            .ok_or_else(|| StoreError::BadTraceId(id_hex.chars().take(64).collect()))?;
        query::trace(&*self.reader()?, id)
    }

    /// Runs retention now on its own connection (tests and tools; the writer runs it periodically).
    pub fn run_retention(&self, config: &StoreConfig) -> Result<RetentionReport, StoreError> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        Ok(retention::run(&conn, config, writer::now_ns())?)
    }

    /// (bytes in use by data, bytes of the database file).
    pub fn size(&self) -> Result<(u64, u64), StoreError> {
        Ok(retention::sizes(&*self.reader()?)?)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}
