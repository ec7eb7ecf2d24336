//go:build laminar_dynamic

package laminar

// Dynamic linking: liblaminar.so from the linker's search path (see `make install` and
// pkg-config laminar).

/*
#cgo LDFLAGS: -llaminar
*/
import "C"
