package laminar

/*
#include <laminar.h>
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/cdata"
)

// Writer pushes records and watermarks into one source. It belongs to one goroutine at a time;
// goroutines writing to one source use one writer each. Close is idempotent.
type Writer struct {
	mu     sync.Mutex
	ptr    *C.laminar_writer
	db     *DB // keeps the DB (and its finalizer) alive while the writer is in use
	source string
}

// Writer creates a writer for a source.
func (db *DB) Writer(source string) (*Writer, error) {
	h, done, err := db.handle()
	if err != nil {
		return nil, err
	}
	defer done()
	s, free := cstr(source)
	defer free()
	w := &Writer{db: db, source: source}
	var cerr *C.laminar_error
	if err := toError(C.laminar_writer_create(h, s, &w.ptr, &cerr), cerr); err != nil {
		return nil, err
	}
	runtime.SetFinalizer(w, (*Writer).Close)
	return w, nil
}

func (w *Writer) handle() (*C.laminar_writer, error) {
	if w.ptr == nil {
		return nil, closedError("the writer for '" + w.source + "'")
	}
	maybeGC()
	return w.ptr, nil
}

// Write pushes one record (zero-copy through the Arrow C Data Interface). Columns are matched
// to the source by name; lossless widenings are cast; anything else is ErrSchemaMismatch naming
// the column, and nothing of the record is applied. Blocks while the source queue is full; a
// context cancelled meanwhile interrupts the blocked call (laminar_writer_cancel): the error then
// matches both ctx.Err() and ErrCancelled, nothing of the record was applied, and the writer
// stays usable.
func (w *Writer) Write(ctx context.Context, rec arrow.RecordBatch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	h, err := w.handle()
	if err != nil {
		return err
	}
	sc := cdata.CArrowSchema{}
	arr := cdata.CArrowArray{}
	cdata.ExportArrowRecordBatch(rec, &arr, &sc)
	defer cdata.ReleaseCArrowSchema(&sc)
	var stop func() bool
	var fired, returned chan struct{}
	if ctx.Done() != nil {
		fired, returned = make(chan struct{}), make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			defer close(fired)
			// An interrupt counts only once the write is waiting for room; repeat it until the
			// call returns so one that lands a moment too early is not lost.
			for {
				C.laminar_writer_cancel(h)
				select {
				case <-returned:
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		})
	}
	var cerr *C.laminar_error
	st := C.laminar_writer_write(h, cSchema(&sc), cArray(&arr), &cerr)
	if stop != nil {
		close(returned)
		if !stop() {
			<-fired // the interrupt ran or is running: let it finish before the handle can be freed
		}
	}
	err = toError(st, cerr)
	runtime.KeepAlive(w)
	if err != nil && errors.Is(err, ErrCancelled) && ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	return err
}

func (w *Writer) call(f func(h *C.laminar_writer, e **C.laminar_error) C.laminar_status) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	h, err := w.handle()
	if err != nil {
		return err
	}
	var cerr *C.laminar_error
	err = toError(f(h, &cerr), cerr)
	runtime.KeepAlive(w)
	return err
}

// Watermark advances the source's watermark to ts (it never moves back).
func (w *Writer) Watermark(ts time.Time) error {
	ms := C.int64_t(ts.UnixMilli())
	return w.call(func(h *C.laminar_writer, e **C.laminar_error) C.laminar_status {
		return C.laminar_writer_watermark(h, ms, e)
	})
}

// Finish marks the end of the source's input: every window closes and is emitted.
func (w *Writer) Finish() error {
	return w.call(func(h *C.laminar_writer, e **C.laminar_error) C.laminar_status { return C.laminar_writer_finish(h, e) })
}

// Flush waits until everything pushed so far has been processed and emitted.
func (w *Writer) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return w.call(func(h *C.laminar_writer, e **C.laminar_error) C.laminar_status { return C.laminar_writer_flush(h, e) })
}

// CurrentWatermark is the source's watermark after what has been processed; ok is false before
// it has one.
func (w *Writer) CurrentWatermark() (ts time.Time, ok bool, err error) {
	var ms C.int64_t
	err = w.call(func(h *C.laminar_writer, e **C.laminar_error) C.laminar_status {
		return C.laminar_writer_current_watermark(h, &ms, e)
	})
	if err != nil || int64(ms) == int64(C.LAMINAR_NO_WATERMARK) {
		return time.Time{}, false, err
	}
	return time.UnixMilli(int64(ms)), true, nil
}

// Close destroys the writer (rows it pushed stay pushed). Idempotent.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ptr != nil {
		C.laminar_writer_destroy(w.ptr)
		w.ptr = nil
	}
	runtime.SetFinalizer(w, nil)
	return nil
}
