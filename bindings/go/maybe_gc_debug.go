//go:build debug

package laminar

import "runtime"

func maybeGC() { runtime.GC() }
