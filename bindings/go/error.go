package laminar

/*
#include <laminar.h>
*/
import "C"

import "fmt"

// Status is a LaminarDB status code, the same in C, Python, Node and Go.
type Status int32

// Statuses (append-only; the values are those of the C ABI).
const (
	StatusOK                Status = C.LAMINAR_OK
	StatusUnknown           Status = C.LAMINAR_UNKNOWN
	StatusNotImplemented    Status = C.LAMINAR_NOT_IMPLEMENTED
	StatusNotFound          Status = C.LAMINAR_NOT_FOUND
	StatusAlreadyExists     Status = C.LAMINAR_ALREADY_EXISTS
	StatusInvalidArgument   Status = C.LAMINAR_INVALID_ARGUMENT
	StatusInvalidState      Status = C.LAMINAR_INVALID_STATE
	StatusInvalidData       Status = C.LAMINAR_INVALID_DATA
	StatusInternal          Status = C.LAMINAR_INTERNAL
	StatusIO                Status = C.LAMINAR_IO
	StatusCancelled         Status = C.LAMINAR_CANCELLED
	StatusTimeout           Status = C.LAMINAR_TIMEOUT
	StatusResourceExhausted Status = C.LAMINAR_RESOURCE_EXHAUSTED
	StatusClosed            Status = C.LAMINAR_CLOSED
	StatusSQLSyntax         Status = C.LAMINAR_SQL_SYNTAX
	StatusPlan              Status = C.LAMINAR_PLAN
)

// String is the status name ("NOT_FOUND").
func (s Status) String() string { return C.GoString(C.laminar_status_str(C.laminar_status(s))) }

// Error is an error from LaminarDB: a status, the engine's message and, for SQL errors, the byte
// offset of the problem in the statement (-1 when there is none). Stream is the name of the
// stream or materialized view whose failure the error reports (a subscription's error after the
// stream failed, a later Subscribe to it or Query of it), "" otherwise; Status stays the
// failure's own (StatusInvalidData for a division by zero, …). errors.Is(err, ErrStreamFailed)
// tells such an error apart.
type Error struct {
	Status    Status
	Message   string
	SQLOffset int64
	Stream    string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "laminar: " + e.Status.String()
	}
	return fmt.Sprintf("laminar: %s: %s", e.Status, e.Message)
}

// Is matches an *Error of the same status, so errors.Is(err, ErrNotFound) works; ErrStreamFailed
// matches every error that reports a failed stream, whatever its status.
func (e *Error) Is(target error) bool {
	if target == ErrStreamFailed {
		return e.Stream != ""
	}
	t, ok := target.(*Error)
	return ok && t != ErrStreamFailed && t.Status == e.Status
}

// Sentinels for errors.Is.
var (
	ErrNotFound        = &Error{Status: StatusNotFound, SQLOffset: -1}
	ErrAlreadyExists   = &Error{Status: StatusAlreadyExists, SQLOffset: -1}
	ErrInvalidArgument = &Error{Status: StatusInvalidArgument, SQLOffset: -1}
	ErrInvalidState    = &Error{Status: StatusInvalidState, SQLOffset: -1}
	ErrSchemaMismatch  = &Error{Status: StatusInvalidData, SQLOffset: -1}
	// ErrInvalidData matches the same status as ErrSchemaMismatch: data that cannot be used (a
	// division by zero, a function's failure or malformed result).
	ErrInvalidData       = &Error{Status: StatusInvalidData, SQLOffset: -1}
	ErrInternal          = &Error{Status: StatusInternal, SQLOffset: -1}
	ErrNotImplemented    = &Error{Status: StatusNotImplemented, SQLOffset: -1}
	ErrIO                = &Error{Status: StatusIO, SQLOffset: -1}
	ErrCancelled         = &Error{Status: StatusCancelled, SQLOffset: -1}
	ErrTimeout           = &Error{Status: StatusTimeout, SQLOffset: -1}
	ErrResourceExhausted = &Error{Status: StatusResourceExhausted, SQLOffset: -1}
	ErrClosed            = &Error{Status: StatusClosed, SQLOffset: -1}
	ErrSyntax            = &Error{Status: StatusSQLSyntax, SQLOffset: -1}
	ErrPlan              = &Error{Status: StatusPlan, SQLOffset: -1}
	// ErrStreamFailed matches an error whose Stream is set: a continuous query failed.
	ErrStreamFailed = &Error{Status: StatusUnknown, SQLOffset: -1, Stream: "*"}
)

// streamOf is the failed stream an error object names, "" when none.
func streamOf(cerr *C.laminar_error) string {
	if s := C.laminar_error_stream(cerr); s != nil {
		return C.GoString(s)
	}
	return ""
}

// toError turns a status and an owned error object (destroyed here) into an error.
func toError(st C.laminar_status, cerr *C.laminar_error) error {
	if st == C.LAMINAR_OK {
		if cerr != nil {
			C.laminar_error_destroy(cerr)
		}
		return nil
	}
	e := &Error{Status: Status(st), SQLOffset: -1}
	if cerr != nil {
		e.Message = C.GoString(C.laminar_error_message(cerr))
		e.SQLOffset = int64(C.laminar_error_sql_offset(cerr))
		e.Stream = streamOf(cerr)
		C.laminar_error_destroy(cerr)
	}
	return e
}

func closedError(what string) error {
	return &Error{Status: StatusClosed, Message: what + " is closed", SQLOffset: -1}
}
