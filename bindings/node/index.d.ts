import type { Table, RecordBatch, Schema, Vector, DataType } from 'apache-arrow';

/** An error from LaminarDB. `code` is the status name shared by C, Python, Go and Node. */
export declare class LaminarError extends Error {
  code:
    | 'UNKNOWN' | 'NOT_IMPLEMENTED' | 'NOT_FOUND' | 'ALREADY_EXISTS' | 'INVALID_ARGUMENT'
    | 'INVALID_STATE' | 'INVALID_DATA' | 'INTERNAL' | 'IO' | 'CANCELLED' | 'TIMEOUT'
    | 'RESOURCE_EXHAUSTED' | 'CLOSED' | 'SQL_SYNTAX' | 'PLAN';
  /** The stream or materialized view whose failure this error reports (the code stays the
   * failure's own, e.g. INVALID_DATA for a division by zero); null for any other error. */
  stream: string | null;
}

/** Rows to push: an apache-arrow Table or RecordBatch, Arrow IPC stream bytes, or plain objects
 * (converted to the source's column types; a value that does not fit is INVALID_DATA naming the
 * column). */
export type InsertData = Table | RecordBatch | Uint8Array | Array<Record<string, unknown>>;

export interface SubscribeOptions {
  /** Aborting it ends the subscription. */
  signal?: AbortSignal;
  /** Batches the engine buffers for this subscriber (default: the database's buffer_size). */
  bufferSize?: number;
  /** 'lag' (default: a subscriber that falls behind is ended with RESOURCE_EXHAUSTED) or 'block'. */
  onFull?: 'lag' | 'block';
  /** Durable databases, pull form: first every kept result of the epochs after this one (a
   * consumer that committed its work up to epoch e passes e after a restart), then live ones. */
  resumeAfterEpoch?: number;
  /** Callback form only: called with the error that ended the subscription, and with anything
   * `onBatch` throws (the subscription then goes on). Without it, both become process warnings. */
  onError?: (err: Error) => void;
}

/** The batches of a stream as they are emitted: one Table per batch (changelog streams carry
 * their `__weight` column). Breaking out of `for await` ends it. */
export declare class Subscription implements AsyncIterable<Table> {
  /** The schema of every batch, known before the first. */
  readonly schema: Schema;
  /** The epoch of the batch next() returned last (0 before the first): the checkpoint that
   * covers it. Once checkpoint e completed, every batch of epochs <= e has been delivered. */
  readonly epoch: number;
  /** The next batch, or null once the subscription has ended. */
  next(): Promise<Table | null>;
  /** Ends the subscription; a pending next() resolves with null. Idempotent. */
  close(): void;
  [Symbol.asyncIterator](): AsyncIterator<Table>;
}

/** A callback subscription. Its callback is unref'd: it never keeps the process alive on its
 * own. Batches are handed to `onBatch` one at a time, in order. */
export declare class CallbackSubscription {
  /** True once the subscription has ended. */
  readonly closed: boolean;
  /** The epoch of the batch onBatch was last called with — inside onBatch, of the batch being
   * handled (0 before the first): the checkpoint that covers it. */
  readonly epoch: number;
  /** Ends the subscription. Idempotent. */
  close(): void;
}

/** A writer into one source. */
export declare class Writer {
  /** Pushes rows without waiting for them to be processed. */
  insert(data: InsertData): Promise<void>;
  /** Advances the source's watermark; it never moves back. */
  watermark(ts: Date | number): Promise<void>;
  /** Marks the end of input: every window of the source closes. */
  finish(): Promise<void>;
  /** Waits until everything pushed so far has been processed. */
  flush(): Promise<void>;
  /** Idempotent. */
  close(): void;
}

export interface CatalogEntry {
  name: string;
  kind: 'source' | 'table' | 'stream' | 'materialized view' | 'sink';
  streamKind: 'append-only' | 'changelog' | 'upsert';
  sql: string;
  inputs: string[];
}

/**
 * A scalar function: one apache-arrow Vector per argument (a batch of rows) in; a Vector of the
 * return type, a typed array, or an array of that many values out.
 */
export type ScalarFn = (...args: Vector[]) => Vector | ArrayLike<unknown> | Iterable<unknown>;

/** A scalar function to register when a database opens (`open(path, config, { functions })`). */
export interface FunctionDefinition {
  /** Lowercase letters, digits and `_` (SQL folds unquoted names to lowercase). */
  name: string;
  fn: ScalarFn;
  argTypes: DataType[];
  returnType: DataType;
  volatility?: 'immutable' | 'stable' | 'volatile';
}

/** An open database. */
export declare class Connection {
  /** Runs one or more `;`-separated statements; resolves to the rows the last one returned. */
  execute(sql: string): Promise<Table | null>;
  /** An ad-hoc SELECT over sources' recent rows and materialized views (or SHOW, DESCRIBE, EXPLAIN). */
  query(sql: string): Promise<Table>;
  /** Pushes rows into a source and waits until they are processed; resolves to the row count. */
  insert(source: string, data: InsertData): Promise<number>;
  /** A writer for a source. */
  writer(source: string): Writer;
  /** Subscribes to a stream: an AsyncIterable of Tables. */
  subscribe(stream: string, options?: SubscribeOptions): Subscription;
  /** Subscribes with a callback run for every batch (it does not keep the process alive). */
  subscribe(stream: string, onBatch: (batch: Table) => void | Promise<void>, options?: SubscribeOptions): CallbackSubscription;
  /**
   * Registers a scalar function for the statements that follow. It runs on this (the JavaScript)
   * thread; a throw, or a result of the wrong length or type, fails the statement or stream that
   * called it with INVALID_DATA.
   */
  registerFunction(
    name: string,
    fn: ScalarFn,
    argTypes: DataType[],
    returnType: DataType,
    options?: { volatility?: 'immutable' | 'stable' | 'volatile' },
  ): void;
  /** The schema of a source, stream or view. */
  schema(name: string): Promise<Schema>;
  catalog(): Promise<CatalogEntry[]>;
  /** Names of what data is pushed into: sources and (keyed) tables. */
  sources(): Promise<string[]>;
  /** Names of the streams and materialized views. */
  streams(): Promise<string[]>;
  /** Metrics as a Table of (kind, name, metric, value). */
  metrics(): Promise<Table>;
  /** Every metric in the Prometheus text exposition format (what `metrics_addr` serves at GET /metrics). */
  metricsText(): Promise<string>;
  /** Takes a checkpoint of everything pushed before the call (INVALID_STATE on an in-memory database). */
  checkpoint(): Promise<void>;
  /** Closes the database; subscriptions end. Idempotent. */
  close(): Promise<void>;
  readonly isClosed: boolean;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Opens a database: ":memory:" (the default) or a directory. `config` holds engine keys
 * ({ workers: 2 }); `options.functions` are registered before it opens (a durable database whose
 * streams call them needs them to reopen).
 */
export declare function open(
  path?: string,
  config?: Record<string, string | number>,
  options?: { functions?: FunctionDefinition[] },
): Promise<Connection>;

/** The library version. */
export declare const version: string;
