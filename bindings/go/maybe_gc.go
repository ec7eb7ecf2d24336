//go:build !debug

package laminar

// maybeGC is a no-op; `-tags debug` makes it force a collection inside every handle access, to
// catch a handle used after the Go object that owns it was collected.
func maybeGC() {}
