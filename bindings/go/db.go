package laminar

/*
#include <stdlib.h>
#include <laminar.h>
*/
import "C"

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/cdata"
)

// DB is an open LaminarDB database. Safe for concurrent use; Close is idempotent.
type DB struct {
	mu  sync.RWMutex // calls hold it shared; Close takes it exclusively
	ptr *C.laminar_db
}

type options struct {
	pairs [][2]string
	funcs []ScalarFunction
}

// Option sets a configuration key of Open.
type Option func(*options)

// WithConfig sets any engine configuration key ("workers", "4"; "buffer_size", "1024";
// "queue_full", "fail"; …). Unknown keys and malformed values make Open fail with
// ErrInvalidArgument naming the key.
func WithConfig(key, value string) Option {
	return func(o *options) { o.pairs = append(o.pairs, [2]string{key, value}) }
}

// WithWorkers sets the number of worker threads for keyed operator state.
func WithWorkers(n int) Option { return WithConfig("workers", strconv.Itoa(n)) }

// WithBufferSize sets how many batches a subscription buffers.
func WithBufferSize(n int) Option { return WithConfig("buffer_size", strconv.Itoa(n)) }

func cstr(s string) (*C.char, func()) {
	c := C.CString(s)
	return c, func() { C.free(unsafe.Pointer(c)) }
}

// newConfig builds a laminar_config from key/values and functions (nil for none).
func newConfig(pairs [][2]string, funcs ...ScalarFunction) (*C.laminar_config, error) {
	if len(pairs) == 0 && len(funcs) == 0 {
		return nil, nil
	}
	var cfg *C.laminar_config
	var cerr *C.laminar_error
	if err := toError(C.laminar_config_create(&cfg, &cerr), cerr); err != nil {
		return nil, err
	}
	for _, kv := range pairs {
		k, fk := cstr(kv[0])
		v, fv := cstr(kv[1])
		st := C.laminar_config_set(cfg, k, v, &cerr)
		fk()
		fv()
		if err := toError(st, cerr); err != nil {
			C.laminar_config_destroy(cfg)
			return nil, err
		}
	}
	for _, f := range funcs {
		if err := registerFunction(cfg, nil, f); err != nil {
			C.laminar_config_destroy(cfg)
			return nil, err
		}
	}
	return cfg, nil
}

// Open opens a database: ":memory:", or a directory for a durable one (durability "wal" by
// default, "checkpoint" if configured); opening a directory that holds a database recovers it.
func Open(path string, opts ...Option) (*DB, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cfg, err := newConfig(o.pairs, o.funcs...)
	if err != nil {
		return nil, err
	}
	defer C.laminar_config_destroy(cfg)
	p, free := cstr(path)
	defer free()
	db := &DB{}
	var cerr *C.laminar_error
	if err := toError(C.laminar_db_open(p, cfg, &db.ptr, &cerr), cerr); err != nil {
		return nil, err
	}
	runtime.SetFinalizer(db, (*DB).Close)
	return db, nil
}

// handle returns the C handle for one call (release with the returned func), or ErrClosed.
func (db *DB) handle() (*C.laminar_db, func(), error) {
	db.mu.RLock()
	if db.ptr == nil {
		db.mu.RUnlock()
		return nil, nil, closedError("the database")
	}
	maybeGC()
	return db.ptr, db.mu.RUnlock, nil
}

// Close stops the pipelines and closes the database. Writers and subscriptions made from it
// then return ErrClosed (closing them stays safe). Idempotent.
func (db *DB) Close() error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.ptr != nil {
		C.laminar_db_close(db.ptr)
		db.ptr = nil
	}
	runtime.SetFinalizer(db, nil)
	return nil
}

// Exec runs one or more ;-separated SQL statements (DDL, INSERT, …); the rows an INSERT added.
// The context is checked before the call (statements are not interruptible once started).
func (db *DB) Exec(ctx context.Context, sql string) (int64, error) {
	s, free := cstr(sql)
	defer free()
	var rows C.int64_t
	err := db.call(ctx, func(h *C.laminar_db, e **C.laminar_error) C.laminar_status {
		return C.laminar_db_execute(h, s, &rows, e)
	})
	return int64(rows), err
}

// call checks ctx (when given), then runs one C function on the live handle under the read lock
// and turns its status into an error. The deferred unlock keeps db reachable until it returns.
func (db *DB) call(ctx context.Context, fn func(h *C.laminar_db, e **C.laminar_error) C.laminar_status) error {
	if ctx != nil {
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	h, done, err := db.handle()
	if err != nil {
		return err
	}
	defer done()
	var cerr *C.laminar_error
	return toError(fn(h, &cerr), cerr)
}

// Query runs an ad-hoc SELECT (over sources' retained rows and materialized views), SHOW,
// DESCRIBE or EXPLAIN. Release the reader when done.
func (db *DB) Query(ctx context.Context, sql string) (array.RecordReader, error) {
	s, free := cstr(sql)
	defer free()
	stream := cdata.CArrowArrayStream{}
	if err := db.call(ctx, func(h *C.laminar_db, e **C.laminar_error) C.laminar_status {
		return C.laminar_db_query(h, s, cStream(&stream), e)
	}); err != nil {
		return nil, err
	}
	return importReader(&stream)
}

// Insert pushes one record into a source and waits until it is processed. A record whose
// columns do not fit the source fails with ErrSchemaMismatch naming the column.
func (db *DB) Insert(ctx context.Context, source string, rec arrow.RecordBatch) error {
	w, err := db.Writer(source)
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Write(ctx, rec); err != nil {
		return err
	}
	return w.Flush(ctx)
}

// Schema is the schema of a source, stream or materialized view (changelog streams end with a
// "__weight" column).
func (db *DB) Schema(name string) (*arrow.Schema, error) {
	n, free := cstr(name)
	defer free()
	sc := cdata.CArrowSchema{}
	if err := db.call(nil, func(h *C.laminar_db, e **C.laminar_error) C.laminar_status {
		return C.laminar_db_schema(h, n, cSchema(&sc), e)
	}); err != nil {
		return nil, err
	}
	return cdata.ImportCArrowSchema(&sc)
}

// CatalogEntry describes a source, table, stream or materialized view.
type CatalogEntry struct {
	Name       string
	Kind       string   // "source", "table", "stream", "materialized view", "sink"
	StreamKind string   // "append-only", "changelog", "upsert"
	SQL        string   // the statement that created it
	Inputs     []string // what a stream reads
}

func (db *DB) batch(fn func(h *C.laminar_db, sc *C.struct_ArrowSchema, arr *C.struct_ArrowArray, e **C.laminar_error) C.laminar_status) (arrow.RecordBatch, error) {
	sc := cdata.CArrowSchema{}
	arr := cdata.CArrowArray{}
	if err := db.call(nil, func(h *C.laminar_db, e **C.laminar_error) C.laminar_status {
		return fn(h, cSchema(&sc), cArray(&arr), e)
	}); err != nil {
		return nil, err
	}
	return importBatch(&sc, &arr)
}

// Catalog lists every source, stream and materialized view.
func (db *DB) Catalog() ([]CatalogEntry, error) {
	rec, err := db.batch(func(h *C.laminar_db, sc *C.struct_ArrowSchema, arr *C.struct_ArrowArray, e **C.laminar_error) C.laminar_status {
		return C.laminar_db_catalog(h, sc, arr, e)
	})
	if err != nil {
		return nil, err
	}
	defer rec.Release()
	// Value aliases the record's memory: clone before the record is released.
	col := func(i, r int) string { return strings.Clone(rec.Column(i).(*array.String).Value(r)) }
	out := make([]CatalogEntry, rec.NumRows())
	for r := range out {
		out[r] = CatalogEntry{Name: col(0, r), Kind: col(1, r), StreamKind: col(2, r), SQL: col(3, r)}
		if in := col(4, r); in != "" {
			out[r].Inputs = strings.Split(in, ",")
		}
	}
	return out, nil
}

func (db *DB) names(kinds ...string) ([]string, error) {
	cat, err := db.Catalog()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range cat {
		for _, k := range kinds {
			if e.Kind == k {
				out = append(out, e.Name)
			}
		}
	}
	return out, nil
}

// Sources lists the names of what data is pushed into: sources and (keyed) tables.
func (db *DB) Sources() ([]string, error) { return db.names("source", "table") }

// Streams lists the names of the streams and materialized views.
func (db *DB) Streams() ([]string, error) { return db.names("stream", "materialized view") }

// Metrics returns one record of (kind, name, metric, value) rows: per source rows_in, rows_late,
// watermark_ms, queue_depth; per stream rows_out, rows_late, late_pairs, state_bytes,
// spilled_groups (RocksDB state backend), watermark_ms, subscribers (not cancelled), failed
// (1 once the stream has failed); per sink rows_out, batches_out, failed; per partition of a
// connector source (kind "partition", name "source/partition") position, lag, records, bytes,
// malformed; per exactly-once KAFKA sink transactions_committed, transactions_aborted; on a
// group member (config shared_dir), per partition it owns (kind "group_partition", name
// "topic/partition") position, lag, epoch, owned_ms, running; pipeline totals.
// Release it when done.
func (db *DB) Metrics() (arrow.RecordBatch, error) {
	return db.batch(func(h *C.laminar_db, sc *C.struct_ArrowSchema, arr *C.struct_ArrowArray, e **C.laminar_error) C.laminar_status {
		return C.laminar_db_metrics(h, sc, arr, e)
	})
}

// MetricsText returns every metric in the Prometheus text exposition format (0.0.4): families
// named laminardb_… in base units, counters ending in _total, checkpoint duration and size as
// histograms. It is what the metrics_addr endpoint serves at GET /metrics.
func (db *DB) MetricsText() (string, error) {
	var text *C.char
	if err := db.call(nil, func(h *C.laminar_db, e **C.laminar_error) C.laminar_status {
		return C.laminar_db_metrics_text(h, &text, e)
	}); err != nil {
		return "", err
	}
	defer C.laminar_free(unsafe.Pointer(text))
	return C.GoString(text), nil
}

// Checkpoint takes a checkpoint of everything pushed before the call and returns its epoch. An
// in-memory database answers ErrInvalidState ("checkpointing is not enabled").
func (db *DB) Checkpoint(ctx context.Context) (int64, error) {
	var epoch C.int64_t
	err := db.call(ctx, func(h *C.laminar_db, e **C.laminar_error) C.laminar_status {
		return C.laminar_db_checkpoint(h, &epoch, e)
	})
	return int64(epoch), err
}
