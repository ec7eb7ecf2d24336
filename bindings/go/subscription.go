package laminar

/*
#include <stdint.h>
#include <laminar.h>

extern void laminarGoOnSchema(void *user_data, struct ArrowSchema *schema);
extern void laminarGoOnBatch(void *user_data, struct ArrowArray *batch);
extern void laminarGoOnError(void *user_data, laminar_error *error);
extern void laminarGoOnClose(void *user_data);

// Go cannot export a function taking a const pointer: this shim adapts the signature.
static void laminar_go_on_error(void *user_data, const laminar_error *error) {
	laminarGoOnError(user_data, (laminar_error *)error);
}

// The callbacks, with user_data carrying a cgo.Handle (an integer, never a Go pointer).
static laminar_subscriber laminar_go_subscriber(uintptr_t handle) {
	laminar_subscriber s = {0};
	s.struct_size = sizeof s;
	s.on_schema = laminarGoOnSchema;
	s.on_batch = laminarGoOnBatch;
	s.on_error = laminar_go_on_error;
	s.on_close = laminarGoOnClose;
	s.user_data = (void *)handle;
	return s;
}
*/
import "C"

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/cgo"
	"strconv"
	"sync"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/cdata"
)

// Message is one item of a subscription: a record, or the error that ended it.
type Message struct {
	Record arrow.RecordBatch // release it when done
	Err    error
	// Epoch is the checkpoint that covers Record: once checkpoint e has completed, every record
	// of epochs <= e has been delivered. A consumer that commits its work per epoch resumes
	// after a restart with SubscribeResume(ctx, name, e) and sees each later result once.
	Epoch uint64
}

// subState is what the C callbacks reach through the cgo.Handle.
type subState struct {
	ch       chan Message
	stop     chan struct{} // closed by Close: a blocked delivery gives up
	stopOnce sync.Once
	schema   *arrow.Schema
	ready    chan struct{} // closed once the schema is known
	// cptr is the C handle, set before any batch is requested (so before on_batch runs).
	cptr *C.laminar_subscription
	// owner keeps the Subscription (and through it the DB) reachable while the callbacks can
	// still run: a consumer that only holds C() must not see it collected and cancelled.
	// The cgo.Handle holds subState until on_close.
	owner *Subscription
}

// Subscription delivers the results of a stream as they are emitted, into a buffered channel
// (C, or Next with a context). Close is idempotent and safe from any goroutine.
type Subscription struct {
	mu     sync.Mutex
	ptr    *C.laminar_subscription
	st     *subState
	handle cgo.Handle
	name   string
	db     *DB // kept alive while the subscription is
}

// Subscribe subscribes to a stream or materialized view; it sees every result emitted after it
// returns. Results wait in a channel of `buffer` records (default 64); a consumer that falls
// further behind holds the engine's callback thread, and the subscription's own buffer
// (buffer_size) then applies the engine's slow-subscriber rule.
func (db *DB) Subscribe(ctx context.Context, name string) (*Subscription, error) {
	return db.SubscribeBuffered(ctx, name, 64)
}

// SubscribeBuffered is Subscribe with a channel of the given capacity.
func (db *DB) SubscribeBuffered(ctx context.Context, name string, buffer int) (*Subscription, error) {
	return db.subscribe(ctx, name, buffer, nil)
}

// SubscribeResume subscribes to a stream of a durable database and delivers first every kept
// result of the epochs after afterEpoch (those a consumer had not committed before a restart),
// then live results. Resuming from before the stream's first subscription, or from a checkpoint
// no longer kept, is ErrInvalidArgument or ErrNotFound naming the earliest possible epoch.
func (db *DB) SubscribeResume(ctx context.Context, name string, afterEpoch uint64) (*Subscription, error) {
	return db.subscribe(ctx, name, 64, [][2]string{{"resume_after_epoch", strconv.FormatUint(afterEpoch, 10)}})
}

func (db *DB) subscribe(ctx context.Context, name string, buffer int, options [][2]string) (*Subscription, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts, err := newConfig(options)
	if err != nil {
		return nil, err
	}
	if opts != nil {
		defer C.laminar_config_destroy(opts)
	}
	h, done, err := db.handle()
	if err != nil {
		return nil, err
	}
	defer done()
	n, free := cstr(name)
	defer free()
	if buffer < 0 {
		buffer = 0
	}
	st := &subState{ch: make(chan Message, buffer), stop: make(chan struct{}), ready: make(chan struct{})}
	handle := cgo.NewHandle(st)
	cb := C.laminar_go_subscriber(C.uintptr_t(handle))
	s := &Subscription{st: st, handle: handle, name: name, db: db}
	st.owner = s
	var cerr *C.laminar_error
	if err := toError(C.laminar_db_subscribe_push(h, n, &cb, opts, &s.ptr, &cerr), cerr); err != nil {
		handle.Delete() // no callback ran; the handle is still ours
		return nil, err
	}
	st.cptr = s.ptr
	if err := toError(C.laminar_subscription_request(s.ptr, C.UINT64_MAX, &cerr), cerr); err != nil {
		s.Close()
		return nil, err
	}
	runtime.KeepAlive(db)
	// A safety net only: while the subscription runs, st.owner keeps it reachable.
	runtime.SetFinalizer(s, (*Subscription).Close)
	return s, nil
}

// C is the channel of results. It is closed after the last message (an error, if the
// subscription ended with one).
func (s *Subscription) C() <-chan Message { return s.st.ch }

// Schema is the schema of every record (known shortly after Subscribe returns).
func (s *Subscription) Schema(ctx context.Context) (*arrow.Schema, error) {
	select {
	case <-s.st.ready:
		if s.st.schema == nil {
			return nil, &Error{Status: StatusClosed, Message: "the subscription ended before its schema arrived", SQLOffset: -1}
		}
		return s.st.schema, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Next waits for the next record. It returns io.EOF when the subscription has ended, the
// subscription's error if one ended it, and ctx.Err() when the context is done first (the
// subscription stays usable).
func (s *Subscription) Next(ctx context.Context) (arrow.RecordBatch, error) {
	select {
	case m, ok := <-s.st.ch:
		if !ok {
			return nil, io.EOF
		}
		return m.Record, m.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close ends the subscription and waits until its callbacks have finished; records still in the
// channel are released. Idempotent.
func (s *Subscription) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ptr == nil {
		return nil
	}
	s.st.stopOnce.Do(func() { close(s.st.stop) })
	C.laminar_subscription_cancel(s.ptr)
	C.laminar_subscription_destroy(s.ptr) // waits for on_close
	s.ptr = nil
	for m := range s.st.ch { // closed by on_close
		if m.Record != nil {
			m.Record.Release()
		}
	}
	runtime.SetFinalizer(s, nil)
	return nil
}

// cancelOnly cancels without waiting (safe from a goroutine started by a callback).
func (s *Subscription) cancelOnly() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ptr != nil {
		C.laminar_subscription_cancel(s.ptr)
	}
}

func stateOf(ud unsafe.Pointer) *subState {
	return cgo.Handle(uintptr(ud)).Value().(*subState)
}

// deliver hands a message to the consumer unless the subscription is being closed.
func (st *subState) deliver(m Message) {
	select {
	case st.ch <- m:
	case <-st.stop:
		if m.Record != nil {
			m.Record.Release()
		}
	}
}

// The trampolines run on LaminarDB's callback thread; a panic must not cross into C.

//export laminarGoOnSchema
func laminarGoOnSchema(ud unsafe.Pointer, schema *C.struct_ArrowSchema) {
	st := stateOf(ud)
	defer func() {
		if r := recover(); r != nil {
			st.deliver(Message{Err: &Error{Status: StatusInternal, Message: fmt.Sprint("schema import panicked: ", r), SQLOffset: -1}})
		}
	}()
	sc, err := cdata.ImportCArrowSchema((*cdata.CArrowSchema)(unsafe.Pointer(schema)))
	if err != nil {
		close(st.ready)
		st.deliver(Message{Err: &Error{Status: StatusInternal, Message: "cannot import the subscription's schema: " + err.Error(), SQLOffset: -1}})
		// Without a schema no batch can be read: end the subscription (on_close follows).
		if o := st.owner; o != nil {
			go o.cancelOnly()
		}
		return
	}
	st.schema = sc
	close(st.ready)
}

//export laminarGoOnBatch
func laminarGoOnBatch(ud unsafe.Pointer, batch *C.struct_ArrowArray) {
	st := stateOf(ud)
	defer func() {
		if r := recover(); r != nil {
			st.deliver(Message{Err: &Error{Status: StatusInternal, Message: fmt.Sprint("record import panicked: ", r), SQLOffset: -1}})
		}
	}()
	if st.schema == nil {
		return // the schema failed to import; that error was delivered
	}
	rec, err := cdata.ImportCRecordBatchWithSchema((*cdata.CArrowArray)(unsafe.Pointer(batch)), st.schema)
	if err != nil {
		st.deliver(Message{Err: err})
		return
	}
	var epoch C.uint64_t
	if st.cptr != nil {
		C.laminar_subscription_epoch(st.cptr, &epoch, nil)
	}
	st.deliver(Message{Record: rec, Epoch: uint64(epoch)})
}

//export laminarGoOnError
func laminarGoOnError(ud unsafe.Pointer, e *C.laminar_error) {
	st := stateOf(ud)
	defer func() { _ = recover() }()
	st.deliver(Message{Err: &Error{
		Status:    Status(C.laminar_error_status(e)),
		Message:   C.GoString(C.laminar_error_message(e)),
		SQLOffset: int64(C.laminar_error_sql_offset(e)),
		Stream:    streamOf(e),
	}})
}

//export laminarGoOnClose
func laminarGoOnClose(ud unsafe.Pointer) {
	h := cgo.Handle(uintptr(ud))
	st := h.Value().(*subState)
	defer func() { _ = recover() }()
	close(st.ch)
	select {
	case <-st.ready:
	default:
		close(st.ready)
	}
	st.owner = nil // the subscription may now be collected
	h.Delete()
}
