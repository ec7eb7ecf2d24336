package laminar

/*
#include <laminar.h>

extern void laminarGoOnLog(void *user_data, laminar_log_level level, char *target, char *message);

// Go cannot export a function taking const pointers: this shim adapts the signature.
static void laminar_go_on_log(void *user_data, laminar_log_level level, const char *target, const char *message) {
	laminarGoOnLog(user_data, level, (char *)target, (char *)message);
}

static laminar_status laminar_go_set_log(laminar_log_level level, laminar_error **err) {
	return laminar_set_log_callback(laminar_go_on_log, NULL, level, err);
}
*/
import "C"

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"unsafe"
)

// LevelTrace is the slog level of LaminarDB's TRACE messages (below slog.LevelDebug).
const LevelTrace = slog.LevelDebug - 4

// logger is the *slog.Logger set by SetLogger; nil means slog.Default() at each message.
var logger atomic.Pointer[slog.Logger]

var setLoggerMu sync.Mutex

func init() {
	// The library prints nothing itself: its messages come here, and go to slog.
	_ = toError(C.laminar_go_set_log(C.LAMINAR_LOG_WARN, nil), nil)
}

// SetLogger sends LaminarDB's log messages to l, or back to slog.Default() (the default) when l
// is nil. The library never writes to stderr itself; its warnings (a torn or corrupt checkpoint
// skipped when a database opens, a torn log tail dropped, a checkpoint at Close or a periodic
// checkpoint that failed) and errors are slog records with the attribute target="laminardb"
// (other targets name a library LaminarDB embeds). Recovery warnings also stay in the database's
// recovery information.
//
// LaminarDB delivers messages at the levels l is enabled for (checked now, from the most verbose:
// LevelTrace, slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError); with the default
// logger, warnings and errors. To drop everything: SetLogger(slog.New(slog.DiscardHandler)).
// Messages come from the goroutine that made a call or from LaminarDB's own threads, possibly
// several at once; the handler must be safe for concurrent use (slog's handlers are).
func SetLogger(l *slog.Logger) error {
	setLoggerMu.Lock()
	defer setLoggerMu.Unlock()
	level := C.laminar_log_level(C.LAMINAR_LOG_WARN)
	if l != nil {
		level = 0
		for _, c := range []struct {
			slog slog.Level
			c    C.laminar_log_level
		}{{slog.LevelError, C.LAMINAR_LOG_ERROR}, {slog.LevelWarn, C.LAMINAR_LOG_WARN}, {slog.LevelInfo, C.LAMINAR_LOG_INFO}, {slog.LevelDebug, C.LAMINAR_LOG_DEBUG}, {LevelTrace, C.LAMINAR_LOG_TRACE}} {
			if l.Handler().Enabled(context.Background(), c.slog) {
				level = c.c
			}
		}
	}
	logger.Store(l)
	var cerr *C.laminar_error
	if level == 0 { // enabled for no level: turn the callback off
		return toError(C.laminar_set_log_callback(nil, nil, 0, &cerr), cerr)
	}
	return toError(C.laminar_go_set_log(level, &cerr), cerr)
}

func slogLevel(level C.laminar_log_level) slog.Level {
	switch level {
	case C.LAMINAR_LOG_ERROR:
		return slog.LevelError
	case C.LAMINAR_LOG_WARN:
		return slog.LevelWarn
	case C.LAMINAR_LOG_INFO:
		return slog.LevelInfo
	case C.LAMINAR_LOG_DEBUG:
		return slog.LevelDebug
	default:
		return LevelTrace
	}
}

//export laminarGoOnLog
func laminarGoOnLog(_ unsafe.Pointer, level C.laminar_log_level, target, message *C.char) {
	l := logger.Load()
	if l == nil {
		l = slog.Default()
	}
	l.Log(context.Background(), slogLevel(level), C.GoString(message), slog.String("target", C.GoString(target)))
}
