package laminar

/*
#include <laminar.h>
*/
import "C"

import (
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/cdata"
)

// The Arrow structs of laminar.h and of arrow-go's cdata are the same C structs seen from two
// cgo packages; these conversions only retype the pointers.

func cSchema(s *cdata.CArrowSchema) *C.struct_ArrowSchema {
	return (*C.struct_ArrowSchema)(unsafe.Pointer(s))
}
func cArray(a *cdata.CArrowArray) *C.struct_ArrowArray {
	return (*C.struct_ArrowArray)(unsafe.Pointer(a))
}
func cStream(s *cdata.CArrowArrayStream) *C.struct_ArrowArrayStream {
	return (*C.struct_ArrowArrayStream)(unsafe.Pointer(s))
}

// importBatch imports a schema and a batch filled by LaminarDB (both released here).
func importBatch(sc *cdata.CArrowSchema, arr *cdata.CArrowArray) (arrow.RecordBatch, error) {
	defer cdata.ReleaseCArrowSchema(sc)
	rec, err := cdata.ImportCRecordBatch(arr, sc)
	if err != nil {
		cdata.ReleaseCArrowArray(arr)
		return nil, err
	}
	return rec, nil
}

// importReader turns a stream filled by LaminarDB into a RecordReader (it owns the stream).
func importReader(s *cdata.CArrowArrayStream) (array.RecordReader, error) {
	r, err := cdata.ImportCRecordReader(s, nil)
	if err != nil {
		return nil, err
	}
	return r.(array.RecordReader), nil
}
