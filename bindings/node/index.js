'use strict';
/**
 * laminardb for Node.js: an embedded streaming SQL database. Promises for everything that can
 * wait — statements, queries, writes, flushes, subscription reads run on libuv's thread pool; short
 * calls (creating writers and subscriptions) and close(), which joins the pipeline thread, run on
 * the calling thread — async iteration over subscriptions, apache-arrow Tables in and out.
 *
 * The library never writes to stderr itself: its warnings (a torn or corrupt checkpoint skipped
 * when a database opens, a torn log tail dropped, a checkpoint at close or a periodic checkpoint
 * that failed) and errors are process warnings, `process.emitWarning(message, { type:
 * 'LaminarDBWarning', code: 'LAMINARDB_WARN' | 'LAMINARDB_ERROR' })`, emitted on the main thread
 * shortly after the engine logs them: listen with `process.on('warning', …)`; Node prints them
 * unless started with `--no-warnings`.
 */
const arrow = require('apache-arrow');
const native = loadNative();

/**
 * The native addon: `laminardb.node` beside this file when built from source (`npm run build` in a
 * checkout), else the prebuilt one of this platform's package (`laminardb-<platform>-<arch>[-<abi>]`,
 * an optional dependency npm installs only on its platform).
 */
function loadNative() {
  const fs = require('node:fs');
  const path = require('node:path');
  const local = path.join(__dirname, 'laminardb.node');
  if (fs.existsSync(local)) return require(local);
  const triple = platformTriple();
  const pkg = `laminardb-${triple}`;
  try {
    return require(pkg);
  } catch (e) {
    if (e && e.code === 'MODULE_NOT_FOUND' && String(e.message).includes(pkg)) {
      const supported = ['linux-x64-gnu'];
      const hint = supported.includes(triple)
        ? `its package ${pkg} is not installed (was the install run with --omit=optional or --no-optional?)`
        : `there is no prebuilt binary for ${triple} (prebuilt: ${supported.join(', ')})`;
      throw new Error(`laminardb: no native addon for this platform: ${hint}; ` +
        'to build it from source, run `npm run build` in bindings/node of a checkout (needs Rust)');
    }
    throw e;
  }
}

function platformTriple() {
  const { platform, arch } = process;
  if (platform === 'linux') {
    const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null;
    const glibc = report && report.header && report.header.glibcVersionRuntime;
    return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`;
  }
  if (platform === 'win32') return `win32-${arch}-msvc`;
  return `${platform}-${arch}`;
}

native.setLogHandler((m) => {
  const options = { type: 'LaminarDBWarning', code: m.level === 'error' ? 'LAMINARDB_ERROR' : 'LAMINARDB_WARN' };
  if (m.target !== 'laminardb') options.detail = `from ${m.target}`;
  process.emitWarning(m.message, options);
});

/**
 * An error from LaminarDB: `code` is the status name shared by every language (NOT_FOUND, …).
 * `stream` names the stream or materialized view whose failure the error reports (a
 * subscription's error after its stream failed, a later subscribe to it or query of it), and is
 * `null` otherwise; `code` stays the failure's own (INVALID_DATA for a division by zero, …).
 */
class LaminarError extends Error {
  constructor(code, message, stream = null) {
    super(message);
    this.name = 'LaminarError';
    this.code = code;
    this.stream = stream;
  }
}

function wrap(e) {
  const m = e && typeof e.message === 'string' ? /^LAMINAR\[(\w+)(?:@([0-9a-f]*))?\] ([\s\S]*)$/.exec(e.message) : null;
  if (!m) return e;
  return new LaminarError(m[1], m[3], m[2] === undefined ? null : Buffer.from(m[2], 'hex').toString('utf8'));
}
async function call(promise) {
  try {
    return await promise;
  } catch (e) {
    throw wrap(e);
  }
}
function callSync(f) {
  try {
    return f();
  } catch (e) {
    throw wrap(e);
  }
}
function stringMap(obj) {
  return obj ? Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, String(v)])) : undefined;
}
function closedError() {
  return new LaminarError('CLOSED', 'the connection is closed');
}

/** Arrow IPC stream bytes for `data`, with plain objects converted to the source's types. */
function toIPC(data, schema) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof arrow.Table) return arrow.tableToIPC(data, 'stream');
  if (data instanceof arrow.RecordBatch) return arrow.tableToIPC(new arrow.Table(data), 'stream');
  if (Array.isArray(data)) {
    const cols = {};
    const names = new Set(schema.fields.map((f) => f.name));
    for (const row of data) {
      for (const k of Object.keys(row)) {
        if (!names.has(k)) throw new LaminarError('INVALID_DATA', `column '${k}' is not in the source schema (columns: ${[...names].join(', ')})`);
      }
    }
    for (const f of schema.fields) {
      if (!data.some((r) => f.name in r)) continue; // the engine names a missing column
      let values = data.map((r) => (r[f.name] === undefined ? null : r[f.name]));
      const int64 = arrow.DataType.isInt(f.type) && f.type.bitWidth === 64;
      try {
        if (int64) values = values.map((v) => (v === null ? null : BigInt(v)));
        cols[f.name] = arrow.vectorFromArray(values, f.type);
      } catch (e) {
        throw new LaminarError('INVALID_DATA', `column '${f.name}' (${f.type}): ${e.message}`);
      }
    }
    return arrow.tableToIPC(new arrow.Table(cols), 'stream');
  }
  throw new TypeError('insert takes an apache-arrow Table or RecordBatch, Arrow IPC stream bytes, or an array of plain objects');
}

// ------------------------------------------------------------------ functions
// JavaScript scalar functions. The engine calls them from its threads, a batch of rows at a time;
// each call is handed to this (the JavaScript) thread, which runs the function and hands the
// result back, so a function costs a thread hop and an IPC round trip per batch, and runs only
// while this thread is free (or inside the package's own calls that wait for the engine).
const functions = new Map(); // dispatcher id -> { name, fn, returnType }
let nextFunctionId = 1;
let udfHost = null;

/** Called by the engine (through the native host) with [id, IPC bytes of the arguments]: never
 * throws; answers IPC bytes of the result column, or a message. */
function dispatch([id, args]) {
  const f = functions.get(id);
  try {
    const t = arrow.tableFromIPC(args);
    const cols = t.schema.fields.map((_, i) => t.getChildAt(i));
    let out = f.fn(...cols);
    if (!(out instanceof arrow.Vector)) out = toVector(out, f.returnType);
    return Buffer.from(arrow.tableToIPC(new arrow.Table({ result: out }), 'stream'));
  } catch (e) {
    const name = e && typeof e.name === 'string' ? e.name : 'Error';
    const message = e && e.message !== undefined ? e.message : String(e);
    return `${name}: ${message}`;
  }
}

/** A function's result that is not a Vector: a typed array, or values of the declared type. */
function toVector(out, type) {
  if (ArrayBuffer.isView(out) && !(out instanceof DataView)) return arrow.makeVector(out);
  try {
    let values = Array.from(out);
    if (arrow.DataType.isInt(type) && type.bitWidth === 64) {
      values = values.map((v) => (v === null || v === undefined ? null : BigInt(v)));
    }
    return arrow.vectorFromArray(values, type);
  } catch (e) {
    throw new TypeError(`its result does not convert to ${type}: ${e.message}`);
  }
}

function host() {
  if (!udfHost) udfHost = new native.NativeUdfHost(dispatch, () => udfHost.serve());
  return udfHost;
}

const VOLATILITIES = ['immutable', 'stable', 'volatile'];

/** The native description of a function; validates the arguments. */
function functionSpec(name, fn, argTypes, returnType, volatility = 'immutable') {
  if (typeof name !== 'string') throw new TypeError('a function name must be a string');
  if (typeof fn !== 'function') throw new TypeError(`the function of '${name}' is not callable`);
  if (!Array.isArray(argTypes) || !argTypes.every((t) => t instanceof arrow.DataType)) {
    throw new TypeError(`argTypes of '${name}' must be an array of apache-arrow DataTypes`);
  }
  if (!(returnType instanceof arrow.DataType)) throw new TypeError(`returnType of '${name}' must be an apache-arrow DataType`);
  if (!VOLATILITIES.includes(volatility)) throw new TypeError(`volatility must be one of ${VOLATILITIES.join(', ')}, not '${volatility}'`);
  const fields = argTypes.map((t, i) => new arrow.Field(`a${i}`, t, true));
  fields.push(new arrow.Field('result', returnType, true));
  const types = Buffer.from(arrow.tableToIPC(new arrow.Table(new arrow.Schema(fields)), 'stream'));
  const id = nextFunctionId++;
  functions.set(id, { name, fn, returnType });
  return { name, id, types, volatility };
}

/** A writer into one source; `close()` is idempotent. */
class Writer {
  constructor(native, conn, source) {
    this._w = native;
    this._conn = conn;
    this._source = source;
    this._queue = Promise.resolve(); // operations apply in call order, even when not awaited
  }
  _then(op) {
    const p = this._queue.then(op);
    this._queue = p.catch(() => {});
    return p;
  }
  /** Pushes rows (same forms as Connection.insert) without waiting for them to be processed. */
  insert(data) {
    return this._then(async () => call(this._w.write(toIPC(data, await this._conn._schema(this._source)))));
  }
  /** Advances the source's watermark (a Date or epoch milliseconds); it never moves back. */
  watermark(ts) {
    const ms = ts instanceof Date ? ts.getTime() : Number(ts);
    if (!Number.isFinite(ms)) return Promise.reject(new TypeError(`watermark takes a Date or epoch milliseconds, got ${ts}`));
    return this._then(() => call(this._w.watermark(ms)));
  }
  /** Marks the end of input: every window of the source closes. */
  finish() {
    return this._then(() => call(this._w.finish()));
  }
  /** Waits until everything pushed so far has been processed. */
  flush() {
    return this._then(() => call(this._w.flush()));
  }
  /** Closes the writer (idempotent); a write waiting for queue room is interrupted. */
  close() {
    this._w.close();
  }
}

/** The batches of a subscription: an AsyncIterable of apache-arrow Tables (one per batch). */
class Subscription {
  constructor(native, signal, onClose) {
    this._sub = native;
    this._done = false;
    this._onClose = onClose;
    this.schema = arrow.tableFromIPC(native.schema()).schema;
    if (signal) {
      if (signal.aborted) this.close();
      else signal.addEventListener('abort', () => this.close(), { once: true });
    }
  }
  /** The epoch of the batch next() returned last (0 before the first): the checkpoint that
   * covers it. */
  get epoch() {
    return this._sub.epoch;
  }
  /** The next batch as a Table, or null once the subscription has ended. */
  async next() {
    while (!this._done) {
      const buf = await call(this._sub.next(250));
      if (buf === null) {
        this._done = true;
        break;
      }
      if (buf.length > 0) return arrow.tableFromIPC(buf);
    }
    return null;
  }
  /** Ends the subscription; a pending next() resolves with null. Idempotent. */
  close() {
    this._done = true;
    this._sub.cancel();
    if (this._onClose) {
      const f = this._onClose;
      this._onClose = undefined;
      f(this);
    }
  }
  async *[Symbol.asyncIterator]() {
    try {
      for (;;) {
        const t = await this.next();
        if (t === null) return;
        yield t;
      }
    } finally {
      this.close(); // early break ends the subscription
    }
  }
}

/** A callback subscription: batches arrive through an unref'd thread-safe callback, so it never
 * keeps the process alive on its own. `close()` ends it (idempotent). */
class CallbackSubscription {
  constructor(conn, name, onBatch, options, onClose) {
    this._onClose = onClose;
    this._chain = Promise.resolve();
    this.closed = false;
    const warn = (e) => process.emitWarning(`laminardb subscription to '${name}': ${e && e.message}`);
    const report = (e) => {
      try {
        (options.onError || warn)(e);
      } catch (e2) {
        warn(e2); // an onError that throws must not become an unhandled rejection
      }
    };
    // Credits bound what waits in JavaScript: 8 batches ahead, one more after each onBatch, so
    // a slow handler pushes back on the engine (bufferSize / onFull then apply).
    this._epoch = 0;
    const run = (table, epoch) => async () => {
      if (this.closed) return;
      this._epoch = epoch;
      try {
        await onBatch(table);
      } catch (e) {
        report(e);
      }
      if (!this.closed) this._native.request(1);
    };
    this._native = callSync(() => conn._live().subscribePush(name, subOptions(options), 8, (msg) => {
      try {
        if (this.closed && msg.kind !== 'closed') return;
        if (msg.kind === 'batch') {
          this._chain = this._chain.then(run(arrow.tableFromIPC(msg.data), msg.epoch));
        } else if (msg.kind === 'error') {
          const e = wrap(new Error(msg.error));
          this._chain = this._chain.then(() => report(e));
        } else if (msg.kind === 'closed') {
          this._chain = this._chain.then(() => this._finished());
        }
      } catch (e) {
        report(e); // nothing may throw out of a thread-safe callback
      }
    }));
    if (options.signal) {
      if (options.signal.aborted) this.close();
      else options.signal.addEventListener('abort', () => this.close(), { once: true });
    }
  }
  /** The epoch of the batch onBatch was last called with — inside onBatch, of the batch being
   * handled (0 before the first): the checkpoint that covers it. */
  get epoch() {
    return this._epoch;
  }
  _finished() {
    this.closed = true;
    if (this._onClose) {
      const f = this._onClose;
      this._onClose = undefined;
      f(this);
    }
  }
  /** Ends the subscription; onBatch is not called again after it. Idempotent. */
  close() {
    if (!this.closed) {
      this.closed = true;
      this._native.close();
    }
    this._finished();
  }
}

function subOptions(options) {
  const opts = {};
  if (options.bufferSize !== undefined) opts.buffer_size = String(options.bufferSize);
  if (options.onFull !== undefined) opts.on_full = String(options.onFull);
  if (options.resumeAfterEpoch !== undefined) opts.resume_after_epoch = String(options.resumeAfterEpoch);
  return opts;
}

/** An open database. Create with `open()`. */
class Connection {
  constructor(db) {
    this._db = db;
    this._schemas = new Map();
    this._subs = new Set(); // open subscriptions, ended cleanly by close()
  }
  _live() {
    if (this._db.isClosed) throw closedError();
    return this._db;
  }
  async _schema(name) {
    let s = this._schemas.get(name);
    if (!s) {
      s = arrow.tableFromIPC(await call(this._live().schema(name))).schema;
      this._schemas.set(name, s);
    }
    return s;
  }
  /** Runs one or more `;`-separated statements; the rows the last returned (a Table) or null. */
  async execute(sql) {
    const buf = await call(this._live().execute(sql));
    this._schemas.clear();
    return buf ? arrow.tableFromIPC(buf) : null;
  }
  /** An ad-hoc SELECT (over sources' recent rows and materialized views), SHOW, DESCRIBE, EXPLAIN. */
  async query(sql) {
    return arrow.tableFromIPC(await call(this._live().query(sql)));
  }
  /** Pushes rows into a source and waits until processed; resolves to the row count. */
  async insert(name, data) {
    const bytes = toIPC(data, await this._schema(name));
    await call(this._live().insert(name, bytes));
    return Array.isArray(data) ? data.length : data instanceof Uint8Array ? arrow.tableFromIPC(data).numRows : data.numRows;
  }
  /** A writer for a source. */
  writer(name) {
    return new Writer(callSync(() => this._live().writer(name)), this, name);
  }
  /**
   * Subscribes to a stream or materialized view.
   * - `subscribe(name, { signal, bufferSize, onFull })` returns an AsyncIterable of Tables.
   * - `subscribe(name, onBatch, { onError, signal })` calls `onBatch(table)` for every batch and
   *   returns the Subscription (close it, or abort the signal, to stop).
   */
  subscribe(name, onBatch, options) {
    if (typeof onBatch !== 'function') {
      options = onBatch;
      onBatch = undefined;
    }
    options = options || {};
    if (onBatch) {
      const cb = new CallbackSubscription(this, name, onBatch, options, (s) => this._subs.delete(s));
      if (!cb.closed) this._subs.add(cb);
      return cb;
    }
    const sub = new Subscription(callSync(() => this._live().subscribe(name, subOptions(options))), options.signal, (s) => this._subs.delete(s));
    if (!sub._done) this._subs.add(sub);
    return sub;
  }
  /**
   * Registers a scalar function for the statements that follow (continuous queries and ad-hoc
   * SQL). `fn` gets one apache-arrow Vector per argument (a batch of rows) and returns a Vector of
   * `returnType`, a typed array, or an array of values of that length. A throw fails the statement
   * or stream that called it (`INVALID_DATA`, "TypeError: …"); so does a result of the wrong length
   * or type. `name`: lowercase letters, digits and `_`. `options.volatility`: 'immutable'
   * (default), 'stable' or 'volatile'. A durable database does not remember it: pass it to
   * `open(path, config, { functions })` when streams call it.
   */
  registerFunction(name, fn, argTypes, returnType, options = {}) {
    const spec = functionSpec(name, fn, argTypes, returnType, options.volatility);
    callSync(() => this._live().registerFunction(host(), spec));
  }
  /** The schema of a source, stream or view (apache-arrow Schema). */
  async schema(name) {
    return arrow.tableFromIPC(await call(this._live().schema(name))).schema;
  }
  /** Every source, stream and view: { name, kind, streamKind, sql, inputs }. */
  async catalog() {
    const t = arrow.tableFromIPC(await call(this._live().catalog()));
    return t.toArray().map((r) => ({
      name: r.name, kind: r.kind, streamKind: r.stream_kind, sql: r.sql, inputs: r.inputs ? r.inputs.split(',') : [],
    }));
  }
  /** Names of what data is pushed into: sources and (keyed) tables. */
  async sources() {
    return (await this.catalog()).filter((e) => e.kind === 'source' || e.kind === 'table').map((e) => e.name);
  }
  /** Names of the streams and materialized views. */
  async streams() {
    return (await this.catalog()).filter((e) => e.kind === 'stream' || e.kind === 'materialized view').map((e) => e.name);
  }
  /** Metrics as a Table of (kind, name, metric, value). */
  async metrics() {
    return arrow.tableFromIPC(await call(this._live().metrics()));
  }
  /** Every metric in the Prometheus text exposition format (what `metrics_addr` serves at GET /metrics). */
  async metricsText() {
    return (await call(this._live().metricsText())).toString('utf8');
  }
  /** Takes a checkpoint (rejects with INVALID_STATE on an in-memory database). */
  async checkpoint() {
    await call(this._live().checkpoint());
  }
  /** Closes the database; open subscriptions end (their iteration finishes). Idempotent. */
  async close() {
    for (const s of [...this._subs]) s.close();
    this._db.close();
  }
  get isClosed() {
    return this._db.isClosed;
  }
  async [Symbol.asyncDispose]() {
    await this.close();
  }
}

/**
 * Opens a database (`":memory:"` or a directory); `config` holds engine keys ({ workers: 2,
 * buffer_size: 1024 }); `options.functions`: scalar functions registered before the database
 * opens, each `{ name, fn, argTypes, returnType, volatility }` (see `registerFunction`), so that a
 * durable database whose streams call them finds them while it reopens.
 */
async function open(path = ':memory:', config = undefined, options = {}) {
  const fns = options.functions || [];
  if (fns.length === 0) return new Connection(callSync(() => new native.NativeDb(path, stringMap(config))));
  const specs = fns.map((f) => functionSpec(f.name, f.fn, f.argTypes, f.returnType, f.volatility));
  return new Connection(callSync(() => native.NativeDb.openWithFunctions(path, stringMap(config), host(), specs)));
}

module.exports = { open, Connection, Writer, Subscription, CallbackSubscription, LaminarError, version: native.version() };
