package laminar

/*
#include <stdint.h>
#include <stdlib.h>
#include <laminar.h>

extern int laminarGoScalarCall(void *user_data, struct ArrowArray *args, struct ArrowSchema *args_schema,
                               struct ArrowArray *out, struct ArrowSchema *out_schema, char *error, size_t error_size);
extern void laminarGoScalarFree(void *user_data);

// Registers a Go scalar function, its user_data a cgo.Handle (an integer, never a Go pointer),
// on a configuration (db NULL) or a database.
static laminar_status laminar_go_register(laminar_config *cfg, laminar_db *db, const char *name,
                                          struct ArrowSchema *args, struct ArrowSchema *ret, int volatility,
                                          uintptr_t handle, laminar_error **err) {
	laminar_scalar_function f = {0};
	f.struct_size = sizeof f;
	f.name = name;
	f.arg_types = args;
	f.return_type = ret->children[0]; // ret: a struct schema of the one result field
	f.volatility = volatility;
	f.call = laminarGoScalarCall;
	f.user_data = (void *)handle;
	f.user_data_free = laminarGoScalarFree;
	return db ? laminar_db_register_scalar_function(db, &f, err) : laminar_config_add_scalar_function(cfg, &f, err);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime/cgo"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/cdata"
)

// Volatility says how a function's result depends on its arguments.
type Volatility int

const (
	// Immutable: the same arguments always give the same result (the zero value).
	Immutable Volatility = iota
	// Stable: the same arguments give the same result within one statement.
	Stable
	// Volatile: the result may differ from call to call.
	Volatile
)

// ScalarFunction is a scalar function written in Go, callable from SQL by Name in continuous
// queries and ad-hoc statements alike.
//
// LaminarDB calls Fn from its own threads, several at once when the database has several
// workers, a batch of rows at a time: one arrow.Array per argument (of the types in Args, all of
// the same length), valid only during the call (Retain one to keep it). Fn returns a new array of
// that length and of type Returns, which LaminarDB takes over (it releases it), or an error. An
// error, a panic (recovered), or a result of the wrong length or type fails the statement or
// stream that called the function with ErrInvalidData and the message; the database and its
// other streams go on.
type ScalarFunction struct {
	// Name: lowercase letters, digits and '_', starting with a letter or '_' (SQL folds unquoted
	// names to lowercase). A built-in function's name is ErrAlreadyExists.
	Name       string
	Args       []arrow.DataType
	Returns    arrow.DataType
	Volatility Volatility
	Fn         func(args []arrow.Array) (arrow.Array, error)
}

// WithFunction registers a scalar function before the database opens: a durable database whose
// streams call it finds it while it reopens (without it, Open fails with ErrPlan naming the
// function).
func WithFunction(f ScalarFunction) Option {
	return func(o *options) { o.funcs = append(o.funcs, f) }
}

// RegisterFunction registers a scalar function for the statements that follow. A stream keeps
// the function it was planned with. A durable database does not remember it across reopens:
// pass it to Open with WithFunction when streams call it.
func (db *DB) RegisterFunction(f ScalarFunction) error {
	h, done, err := db.handle()
	if err != nil {
		return err
	}
	defer done()
	return registerFunction(nil, h, f)
}

// registerFunction registers f on cfg or db (one of them nil).
func registerFunction(cfg *C.laminar_config, db *C.laminar_db, f ScalarFunction) error {
	if f.Fn == nil {
		return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("function '%s': Fn is nil", f.Name)}
	}
	if f.Returns == nil {
		return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("function '%s': Returns is nil", f.Name)}
	}
	fields := make([]arrow.Field, len(f.Args))
	for i, t := range f.Args {
		if t == nil {
			return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("function '%s': argument %d has no type", f.Name, i+1)}
		}
		fields[i] = arrow.Field{Name: fmt.Sprintf("a%d", i), Type: t, Nullable: true}
	}
	var args, ret cdata.CArrowSchema
	cdata.ExportArrowSchema(arrow.NewSchema(fields, nil), &args)
	defer cdata.ReleaseCArrowSchema(&args)
	cdata.ExportArrowSchema(arrow.NewSchema([]arrow.Field{{Name: "result", Type: f.Returns, Nullable: true}}, nil), &ret)
	defer cdata.ReleaseCArrowSchema(&ret)
	name, free := cstr(f.Name)
	defer free()
	fn := f
	handle := cgo.NewHandle(&fn)
	var cerr *C.laminar_error
	st := C.laminar_go_register(cfg, db, name, cSchema(&args), cSchema(&ret), C.int(f.Volatility), C.uintptr_t(handle), &cerr)
	if err := toError(st, cerr); err != nil {
		handle.Delete() // refused: LaminarDB did not keep it
		return err
	}
	return nil
}

//export laminarGoScalarFree
func laminarGoScalarFree(ud unsafe.Pointer) {
	cgo.Handle(uintptr(ud)).Delete()
}

//export laminarGoScalarCall
func laminarGoScalarCall(ud unsafe.Pointer, args *C.struct_ArrowArray, argsSchema *C.struct_ArrowSchema,
	out *C.struct_ArrowArray, outSchema *C.struct_ArrowSchema, errBuf *C.char, errSize C.size_t) C.int {
	f := cgo.Handle(uintptr(ud)).Value().(*ScalarFunction)
	err := callScalar(f, args, argsSchema, out, outSchema)
	if err == nil {
		return 0
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(errBuf)), int(errSize))
	n := copy(buf[:len(buf)-1], err.Error())
	buf[n] = 0
	return 1
}

// callScalar imports the arguments (moving them out of LaminarDB's structs), calls the Go
// function with a panic recovered as an error, and exports its result into out/outSchema.
func callScalar(f *ScalarFunction, args *C.struct_ArrowArray, argsSchema *C.struct_ArrowSchema,
	out *C.struct_ArrowArray, outSchema *C.struct_ArrowSchema) (err error) {
	rec, err := cdata.ImportCRecordBatch((*cdata.CArrowArray)(unsafe.Pointer(args)), (*cdata.CArrowSchema)(unsafe.Pointer(argsSchema)))
	if err != nil {
		return fmt.Errorf("cannot import the arguments: %w", err)
	}
	defer rec.Release()
	result, err := func() (res arrow.Array, err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("panic: %v", p)
			}
		}()
		return f.Fn(rec.Columns())
	}()
	if err != nil {
		return err
	}
	if result == nil {
		return errors.New("it returned a nil array and no error")
	}
	defer result.Release()
	cdata.ExportArrowArray(result, (*cdata.CArrowArray)(unsafe.Pointer(out)), (*cdata.CArrowSchema)(unsafe.Pointer(outSchema)))
	return nil
}
