//! The database handle: open/close, SQL, ad-hoc queries, inserts, catalog, metrics, checkpoints.
//!
//! [`Db`] and its `laminar_db_*` C exports. The other handles extend `Db` in their own modules:
//! `writer` adds `Db::writer` and `Db::insert`, `subscription` adds `Db::subscribe` and
//! `Db::subscribe_push`; this module imports neither.

use std::collections::VecDeque;
use std::ffi::c_char;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow::ffi_stream::FFI_ArrowArrayStream;
use laminar_core::sql::{ObjectKind, Statement};
use laminar_core::{Database, Error, ExecuteResult, Result};

use crate::arrow::{VecSource, export_batch, export_stream, import_stream, write_schema};
use crate::config::{self, Config, laminar_config};
use crate::error::{cstr, guard, guard_void, handle, laminar_error, laminar_status, out_ptr};

/// An open database, shared by every handle made from it. Cheap to clone; thread-safe.
#[derive(Clone)]
pub struct Db {
    db: Database,
    pid: u32,
}

/// A finished result: its schema (known even with no rows) and its batches.
pub struct QueryStream {
    pub schema: SchemaRef,
    pub batches: VecDeque<RecordBatch>,
}

impl Iterator for QueryStream {
    type Item = RecordBatch;
    fn next(&mut self) -> Option<RecordBatch> {
        self.batches.pop_front()
    }
}

impl Db {
    /// Opens `path` (`":memory:"`, or a directory: durability `wal` unless the config says
    /// `checkpoint`) with `config`; a directory is recovered when it holds a database.
    pub fn open(path: &str, config: &Config) -> Result<Db> {
        Ok(Db { db: Database::open(path, config.to_core()?)?, pid: std::process::id() })
    }

    /// Like [`Db::open`], with user-defined functions in the config (a durable database's
    /// streams that call them are replayed when it opens).
    pub fn open_with_functions(path: &str, config: &Config, functions: laminar_core::Functions) -> Result<Db> {
        let mut core = config.to_core()?;
        core.functions = functions;
        Ok(Db { db: Database::open(path, core)?, pid: std::process::id() })
    }

    /// The engine database (for bindings that need the full Rust API).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Fails with INVALID_STATE in a child process after `fork()`: the engine's threads did not
    /// survive the fork, so every call would hang.
    pub fn check_process(&self) -> Result<()> {
        let now = std::process::id();
        if now != self.pid {
            return Err(Error::invalid_state(format!(
                "this database was opened in process {}; after fork() the child (process {now}) must open its own",
                self.pid
            )));
        }
        Ok(())
    }

    /// Whether this is a child process forked after the database was opened.
    pub fn in_forked_child(&self) -> bool {
        std::process::id() != self.pid
    }

    /// Stops the pipelines; every later call here and on child handles returns CLOSED. Idempotent.
    pub fn close(&self) {
        if self.check_process().is_ok() {
            self.db.close();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.db.is_closed()
    }

    /// Fails in a forked child (INVALID_STATE) and after close (CLOSED).
    pub fn check_open(&self) -> Result<()> {
        self.check_process()?;
        if self.db.is_closed() {
            return Err(Error::closed());
        }
        Ok(())
    }

    /// Runs one or more `;`-separated statements; the result of the last.
    pub fn execute(&self, sql: &str) -> Result<ExecuteResult> {
        self.check_process()?;
        self.db.execute(sql)
    }

    /// Runs one statement that returns rows (SELECT, SHOW, DESCRIBE, SHOW CREATE, EXPLAIN).
    /// Anything else is INVALID_ARGUMENT and is not run.
    pub fn query(&self, sql: &str) -> Result<QueryStream> {
        self.check_open()?;
        let stmt = laminar_core::sql::parse_one(sql)?;
        match stmt.statement {
            Statement::Query(_) => {
                let (schema, batches) = self.db.query_with_schema(sql)?;
                Ok(QueryStream { schema, batches: batches.into() })
            }
            Statement::Show(_)
            | Statement::ShowFunctions
            | Statement::ShowPartitions
            | Statement::Describe(_)
            | Statement::ShowCreate(_)
            | Statement::Explain(_)
            | Statement::ExplainAnalyze(_) => {
                let r = self.db.execute(sql)?;
                let schema = r.schema.clone().unwrap_or_else(|| Arc::new(Schema::empty()));
                Ok(QueryStream { schema, batches: r.batches.into() })
            }
            _ => Err(Error::invalid_argument(
                "this statement returns no rows; run it with execute (query takes SELECT, SHOW, DESCRIBE, SHOW CREATE or EXPLAIN)",
            )),
        }
    }

    /// The schema of a source, stream or view (with `__weight` for changelog streams).
    pub fn schema(&self, name: &str) -> Result<SchemaRef> {
        self.check_process()?;
        Ok(self.db.object(name)?.schema)
    }

    /// Every catalog object as one batch: `name`, `kind` (source, stream, materialized view, table,
    /// sink),
    /// `stream_kind` (append-only, changelog, upsert), `sql` and `inputs` (the objects a stream
    /// reads, comma-separated), sorted by kind then name.
    pub fn catalog(&self) -> Result<RecordBatch> {
        self.check_process()?;
        let (mut names, mut kinds, mut stream_kinds, mut sqls, mut inputs) = (vec![], vec![], vec![], vec![], vec![]);
        for kind in
            [ObjectKind::Source, ObjectKind::Stream, ObjectKind::MaterializedView, ObjectKind::Table, ObjectKind::Sink]
        {
            for n in self.db.list(kind)? {
                let info = self.db.object(&n)?;
                names.push(n);
                kinds.push(kind.noun().to_string());
                stream_kinds.push(info.stream_kind.to_string());
                sqls.push(info.sql);
                inputs.push(info.inputs.join(","));
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("stream_kind", DataType::Utf8, false),
            Field::new("sql", DataType::Utf8, false),
            Field::new("inputs", DataType::Utf8, false),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(StringArray::from(kinds)),
            Arc::new(StringArray::from(stream_kinds)),
            Arc::new(StringArray::from(sqls)),
            Arc::new(StringArray::from(inputs)),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    /// Metrics as one batch of `(kind, name, metric, value)` rows.
    pub fn metrics(&self) -> Result<RecordBatch> {
        self.check_process()?;
        self.db.metrics_batch()
    }

    /// Every metric in the Prometheus text exposition format (0.0.4).
    pub fn metrics_text(&self) -> Result<String> {
        self.check_process()?;
        self.db.metrics_text()
    }

    /// The address the metrics endpoint listens on (`metrics_addr`; with port 0, the port the
    /// system chose); None without an endpoint.
    pub fn metrics_endpoint(&self) -> Option<std::net::SocketAddr> {
        self.db.metrics_endpoint()
    }

    /// Waits until everything pushed before the call has been processed and emitted.
    pub fn flush(&self) -> Result<()> {
        self.check_process()?;
        self.db.flush()
    }

    /// Takes a checkpoint; its epoch.
    pub fn checkpoint(&self) -> Result<i64> {
        self.check_process()?;
        self.db.checkpoint()
    }
}

/// A database. Fully thread-safe: any number of threads may call functions on one `laminar_db`
/// at once. Must be destroyed with `laminar_db_close`. Child handles (writers, subscriptions)
/// keep the engine alive and may be destroyed before or after it.
///
/// Since: 0.1.0
#[allow(non_camel_case_types)]
pub struct laminar_db {
    pub(crate) db: Db,
}

/// Opens a database.
///
/// - `path`: borrowed; `":memory:"` for an in-memory database, or a directory (created if
///   missing) for a durable one: durability `wal` by default (every push is in the write-ahead
///   log before it returns), `checkpoint` if the config says so. Opening a directory that holds
///   a database recovers it: catalog, operator state, views, watermarks and source positions
///   from the newest intact checkpoint, then the log past it (a torn or corrupt checkpoint is
///   skipped with a warning: see `laminar_set_log_callback`; nothing is printed on stderr).
/// - `config`: borrowed, may be NULL (every key at its default); not needed after the call.
/// - `out`: caller-owned output; receives the database, or NULL on failure.
///
/// Errors: `LAMINAR_INVALID_ARGUMENT` (NULL `path`/`out`, invalid UTF-8, durability `memory`
/// with a directory or `checkpoint`/`wal` with `":memory:"`), `LAMINAR_INVALID_STATE` (the
/// directory is open elsewhere; a recovered stream plans differently in this version),
/// `LAMINAR_IO` (no intact checkpoint, unreadable files). Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_open(
    path: *const c_char,
    config: *const laminar_config,
    out: *mut *mut laminar_db,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: pointers are NULL or valid (caller contract).
        let out = unsafe { out_ptr(out, "out") }?;
        // SAFETY: as above.
        let (path, cfg) = unsafe { (cstr(path, "path")?, config::optional(config)?) };
        *out = Box::into_raw(Box::new(laminar_db { db: Db::open(path, &cfg)? }));
        Ok(())
    })
}

/// Closes a database and destroys the handle. Stops the pipelines; subscriptions end (push
/// subscribers get `on_error` with `LAMINAR_CLOSED`, then `on_close`); calls on surviving writers
/// and subscriptions return `LAMINAR_CLOSED`, and destroying them stays safe. A no-op for NULL.
///
/// - `db`: consumed. No other thread may be using this `laminar_db*` during or after the call.
///
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_close(db: Option<Box<laminar_db>>) {
    guard_void(|| {
        if let Some(db) = db {
            if db.db.in_forked_child() {
                // The engine's threads do not exist in a forked child: tearing it down would wait
                // for them forever. The memory belongs to the parent's image; leave it.
                std::mem::forget(db);
                return;
            }
            db.db.close();
        }
    });
}

/// Runs one or more `;`-separated SQL statements (DDL, INSERT, SELECT…); rows a statement
/// returns are discarded (use `laminar_db_query` for those).
///
/// - `db`: borrowed. `sql`: borrowed.
/// - `out_rows_affected`: may be NULL; receives the rows inserted by an INSERT (else 0).
///
/// Errors: `LAMINAR_SQL_SYNTAX`, `LAMINAR_PLAN` (with `laminar_error_sql_offset` where known),
/// `LAMINAR_NOT_FOUND`, `LAMINAR_ALREADY_EXISTS`, `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_execute(
    db: *mut laminar_db,
    sql: *const c_char,
    out_rows_affected: *mut i64,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    // SAFETY: NULL or NUL-terminated (caller contract); used only to locate SQL errors.
    let sql_text = unsafe { cstr(sql, "sql") }.ok();
    guard(out_error, sql_text, || {
        // SAFETY: pointers are NULL or valid (caller contract).
        let (db, sql) = unsafe { (handle(db, "db")?, cstr(sql, "sql")?) };
        let r = db.db.execute(sql)?;
        // SAFETY: NULL or writable.
        if let Some(o) = unsafe { out_rows_affected.as_mut() } {
            *o = r.rows_affected as i64;
        }
        Ok(())
    })
}

/// Runs one statement that returns rows — an ad-hoc `SELECT` over sources (their retained rows)
/// and materialized views, `SHOW …`, `DESCRIBE`, `SHOW CREATE` or `EXPLAIN` — and hands the
/// result over as a stream. Other statements are refused, not run.
///
/// - `db`: borrowed. `sql`: borrowed.
/// - `out`: caller-allocated; filled with a stream the caller owns and must release
///   (`out->release(out)`). On failure it is left untouched. The stream is not thread-safe and
///   stays valid after `laminar_db_close`.
///
/// Errors: as `laminar_db_execute`, plus `LAMINAR_INVALID_ARGUMENT` for a statement without rows.
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_query(
    db: *mut laminar_db,
    sql: *const c_char,
    out: *mut FFI_ArrowArrayStream,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    // SAFETY: NULL or NUL-terminated (caller contract); used only to locate SQL errors.
    let sql_text = unsafe { cstr(sql, "sql") }.ok();
    guard(out_error, sql_text, || {
        // SAFETY: pointers are NULL or valid (caller contract).
        let (db, sql) = unsafe { (handle(db, "db")?, cstr(sql, "sql")?) };
        if out.is_null() {
            return Err(Error::invalid_argument("out is NULL"));
        }
        let q = db.db.query(sql)?;
        // SAFETY: `out` is non-NULL and writable (caller contract).
        unsafe { export_stream(q.schema, Box::new(VecSource(q.batches)), out) };
        Ok(())
    })
}

/// Pushes every batch of a stream into `source` and waits until they are processed.
///
/// - `db`: borrowed. `source`: borrowed.
/// - `stream`: consumed — released on return, on success and on failure alike.
/// - `out_rows`: may be NULL; receives the number of rows pushed.
///
/// Errors: `LAMINAR_NOT_FOUND` (no such source), `LAMINAR_INVALID_DATA` (a batch that does not
/// match the source schema; batches before it stay applied), `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_insert(
    db: *mut laminar_db,
    source: *const c_char,
    stream: *mut FFI_ArrowArrayStream,
    out_rows: *mut i64,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        if stream.is_null() {
            return Err(Error::invalid_argument("stream is NULL"));
        }
        // SAFETY: non-NULL; the stream is moved out first so it is released on every path.
        let reader = unsafe { import_stream(stream) };
        // SAFETY: pointers are NULL or valid (caller contract).
        let (db, source) = unsafe { (handle(db, "db")?, cstr(source, "source")?) };
        let rows = db.db.insert(source, reader?)?;
        // SAFETY: NULL or writable.
        if let Some(o) = unsafe { out_rows.as_mut() } {
            *o = rows as i64;
        }
        Ok(())
    })
}

/// The schema of a source, stream or materialized view, as subscribers see it (a changelog
/// stream has a trailing `__weight` column).
///
/// - `db`, `name`: borrowed.
/// - `out`: caller-allocated; filled with a schema the caller owns and must release. Untouched
///   on failure.
///
/// Errors: `LAMINAR_NOT_FOUND` (the message suggests a near name), `LAMINAR_CLOSED`.
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_schema(
    db: *mut laminar_db,
    name: *const c_char,
    out: *mut FFI_ArrowSchema,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: pointers are NULL or valid (caller contract).
        let (db, name) = unsafe { (handle(db, "db")?, cstr(name, "name")?) };
        if out.is_null() {
            return Err(Error::invalid_argument("out is NULL")); // arguments before lookups
        }
        let schema = db.db.schema(name)?;
        // SAFETY: NULL or writable (caller contract).
        unsafe { write_schema(out, &schema) }
    })
}

unsafe fn write_batch(
    batch: &RecordBatch,
    out_schema: *mut FFI_ArrowSchema,
    out_array: *mut FFI_ArrowArray,
) -> Result<()> {
    if out_schema.is_null() || out_array.is_null() {
        return Err(Error::invalid_argument("out_schema or out_array is NULL"));
    }
    // SAFETY: both outputs are non-NULL and writable (caller contract).
    unsafe {
        write_schema(out_schema, &batch.schema())?;
        out_array.write(export_batch(batch));
    }
    Ok(())
}

/// The catalog as one batch (a struct array) with columns `name`, `kind` (`source`, `stream`,
/// `materialized view`), `stream_kind` (`append-only`, `changelog`, `upsert`), `sql` and `inputs`
/// (the objects a stream reads, comma-separated; empty for a source).
///
/// - `db`: borrowed.
/// - `out_schema`, `out_array`: caller-allocated; filled with structs the caller owns and must
///   release. Untouched on failure.
///
/// Errors: `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_catalog(
    db: *mut laminar_db,
    out_schema: *mut FFI_ArrowSchema,
    out_array: *mut FFI_ArrowArray,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let db = unsafe { handle(db, "db") }?;
        let b = db.db.catalog()?;
        // SAFETY: outputs checked inside.
        unsafe { write_batch(&b, out_schema, out_array) }
    })
}

/// Metrics as one batch with columns `kind` (`source`, `partition`, `stream`, `sink`,
/// `group_partition`, `pipeline`), `name` (a partition's: `source/partition`; a group member's
/// owned partition's: `topic/partition`), `metric` (`rows_in`, `rows_out`,
/// `batches_out`, `rows_late`, `late_pairs`, `state_bytes`, `spilled_groups`, `watermark_ms`,
/// `queue_depth`, `subscribers`, `failed`, `events_processed`; a connector source's partitions:
/// `position`, `lag`, `records`, `bytes`, `malformed`; an exactly-once KAFKA sink's
/// `transactions_committed`, `transactions_aborted`; a partition a group member owns (config
/// `shared_dir`): `position`, `lag`, `epoch`, `owned_ms`, `running`;
/// `spilled_groups`: groups held by the RocksDB state backend; `subscribers`: a stream's
/// subscriptions not cancelled or dropped; `failed`: 1 once a stream or sink has failed; a
/// sink's `rows_out`, `batches_out`: what it wrote) and `value` (int64, NULL for a watermark
/// not yet set).
///
/// - `db`: borrowed. `out_schema`, `out_array`: as `laminar_db_catalog`.
///
/// Errors: `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_metrics(
    db: *mut laminar_db,
    out_schema: *mut FFI_ArrowSchema,
    out_array: *mut FFI_ArrowArray,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let db = unsafe { handle(db, "db") }?;
        let b = db.db.metrics()?;
        // SAFETY: outputs checked inside.
        unsafe { write_batch(&b, out_schema, out_array) }
    })
}

/// Every metric in the Prometheus text exposition format (version 0.0.4): families named
/// `laminardb_…` in base units (`_seconds`, `_bytes`, counters `_total`), labelled by `source`,
/// `stream`, `sink`, `partition`, `operator`; checkpoint duration and size as histograms. The
/// text the `metrics_addr` endpoint serves at `GET /metrics`. The README lists the families.
///
/// - `db`: borrowed. `out_text`: receives a NUL-terminated UTF-8 string owned by the caller,
///   released with `laminar_free`; NULL on failure.
///
/// Errors: `LAMINAR_CLOSED`, `LAMINAR_INVALID_ARGUMENT` (`db` or `out_text` NULL). Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_metrics_text(
    db: *mut laminar_db,
    out_text: *mut *mut c_char,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        if out_text.is_null() {
            return Err(Error::invalid_argument("out_text is NULL"));
        }
        // SAFETY: checked non-NULL; the caller passes a writable `char**`.
        unsafe { out_text.write(std::ptr::null_mut()) };
        // SAFETY: NULL or a live handle (caller contract).
        let db = unsafe { handle(db, "db") }?;
        let text = db.db.metrics_text()?;
        let block = crate::alloc_c_string(&text)?;
        // SAFETY: as above.
        unsafe { out_text.write(block) };
        Ok(())
    })
}

/// Waits until every batch and watermark pushed before this call has been processed and its
/// results emitted.
///
/// - `db`: borrowed.
///
/// Errors: `LAMINAR_CLOSED`. Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_flush(db: *mut laminar_db, out_error: *mut *mut laminar_error) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        unsafe { handle(db, "db") }?.db.flush()
    })
}

/// Takes a checkpoint of everything pushed before the call: catalog, every operator's state,
/// views, tables, watermarks and source positions, written to files and then a manifest renamed
/// into place. Results emitted after it belong to the next epoch.
///
/// - `db`: borrowed. `out_epoch`: may be NULL; receives the checkpoint's epoch (1, 2, …).
///
/// Errors: `LAMINAR_INVALID_STATE` for a database with durability `memory`, `LAMINAR_IO` (a
/// write failed, e.g. a full disk; the previous checkpoint stays usable), `LAMINAR_CLOSED`.
/// Since: 0.1.0
#[unsafe(no_mangle)]
pub unsafe extern "C" fn laminar_db_checkpoint(
    db: *mut laminar_db,
    out_epoch: *mut i64,
    out_error: *mut *mut laminar_error,
) -> laminar_status {
    guard(out_error, None, || {
        // SAFETY: NULL or a live handle (caller contract).
        let epoch = unsafe { handle(db, "db") }?.db.checkpoint()?;
        // SAFETY: NULL or writable.
        if let Some(o) = unsafe { out_epoch.as_mut() } {
            *o = epoch;
        }
        Ok(())
    })
}
