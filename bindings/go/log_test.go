package laminar

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// captureHandler keeps every record it is given.
type captureHandler struct {
	mu      *sync.Mutex
	level   slog.Level
	records *[]slog.Record
}

func (h captureHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }
func (h captureHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.records = append(*h.records, r.Clone())
	return nil
}
func (h captureHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h captureHandler) WithGroup(string) slog.Handler      { return h }

// durableWithATornLogTail creates a durable database in dir (a source, then Close: a checkpoint)
// and appends a few bytes of garbage to its newest log segment: the next Open drops them with a
// warning.
func durableWithATornLogTail(t *testing.T, dir string) {
	t.Helper()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, "CREATE SOURCE IF NOT EXISTS s (k BIGINT NOT NULL)")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(dir, "wal", "*"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no log segment: %v", err)
	}
	sort.Strings(segs)
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab}); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// Warnings are slog records (target "laminardb") on the logger of SetLogger, and the library
// writes nothing to stderr.
func TestWarningsGoToSlogNotStderr(t *testing.T) {
	var mu sync.Mutex
	var records []slog.Record
	if err := SetLogger(slog.New(captureHandler{mu: &mu, level: slog.LevelWarn, records: &records})); err != nil {
		t.Fatal(err)
	}
	defer SetLogger(nil)

	// fd 2 goes to a file while the library runs; it must stay empty.
	errFile, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	saved, err := syscall.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Dup3(int(errFile.Fd()), 2, 0); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		syscall.Dup3(saved, 2, 0)
		syscall.Close(saved)
	}
	defer restore()

	dir := t.TempDir()
	durableWithATornLogTail(t, dir)
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	// Off: nothing reaches any logger.
	if err := SetLogger(slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	durableWithATornLogTail(t, dir)
	if db, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	db.Close()
	restore()
	restore = func() {}

	if out, _ := os.ReadFile(errFile.Name()); len(out) != 0 {
		t.Fatalf("the library wrote to stderr: %q", out)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(records) != 1 {
		t.Fatalf("want 1 record, got %d: %v", len(records), records)
	}
	r := records[0]
	target := ""
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "target" {
			target = a.Value.String()
		}
		return true
	})
	if r.Level != slog.LevelWarn || target != "laminardb" || !strings.Contains(r.Message, "torn tail") {
		t.Fatalf("record: level %v, target %q, message %q", r.Level, target, r.Message)
	}
}
