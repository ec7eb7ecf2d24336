//go:build !laminar_dynamic

package laminar

// Static linking of lib/linux-arm64/liblaminar.a, put there by `make go-lib`.

/*
#cgo LDFLAGS: ${SRCDIR}/lib/linux-arm64/liblaminar.a -lstdc++ -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
*/
import "C"
