// Package laminar is the Go binding of LaminarDB, an embedded streaming SQL database: sources you
// push Arrow records into, continuous SQL queries with event-time windows, and results delivered
// as they happen — inside your process.
//
// It wraps the C ABI (include/laminar.h) through cgo and links lib/<os>-<arch>/liblaminar.a
// statically, with no CGO_LDFLAGS: the module scripts/dist.sh builds carries the prebuilt library
// and the header (include/) inside it; in a checkout, `make go-lib` from the repository root puts
// the library there. Build with `-tags laminar_dynamic` to link liblaminar.so found by the system
// linker instead.
//
// Records cross through arrow-go's cdata package without copies. Subscription.Next and
// Writer.Write honour their context while they wait (a cancelled context interrupts a write
// blocked on a full queue); Exec, Query, Flush and Checkpoint check it before they start.
// Scalar functions written in Go (ScalarFunction, DB.RegisterFunction, WithFunction) run inside
// the engine over whole arrow.Arrays, in continuous queries and ad-hoc SQL alike.
// Errors are *Error values matchable with errors.Is against the sentinels (ErrNotFound,
// ErrSchemaMismatch, ErrClosed, …).
//
// The library never writes to stderr itself: its warnings and errors are log/slog records (see
// SetLogger).
//
// A *DB is safe for concurrent use. A *Writer belongs to one goroutine at a time (use one writer
// per goroutine). A *Subscription's Next and C may be used from any goroutine.
package laminar

/*
#cgo CFLAGS: -I${SRCDIR}/include -I${SRCDIR}/../../include
#include <stdlib.h>
#include <laminar.h>
*/
import "C"

import "fmt"

// Version is the library's version, "MAJOR.MINOR.PATCH".
func Version() string { return C.GoString(C.laminar_version()) }

func init() {
	// The header this package was compiled against and the library it linked must agree.
	if C.laminar_version_number() != C.LAMINAR_VERSION_NUMBER {
		panic(fmt.Sprintf("laminar: header version %d but library version %d", C.LAMINAR_VERSION_NUMBER, C.laminar_version_number()))
	}
}
