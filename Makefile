# The C library: build, install, test. Cargo does the compiling; this file only arranges the
# C side. `make install PREFIX=/opt/laminar` installs include/laminar.h, liblaminar.so,
# liblaminar.a and lib/pkgconfig/laminar.pc.
#
#   PROFILE=release (default) or dev — the cargo profile; tests and CI use dev so the engine
#   compiles once for every test. CARGO_TARGET_DIR is honoured. FEATURES=rocksdb (or the
#   environment's LAMINAR_FEATURES) adds the RocksDB state backend.

PREFIX     ?= /usr/local
PROFILE    ?= release
CARGO      ?= cargo
# Cargo features of the library, e.g. FEATURES=rocksdb (default: $LAMINAR_FEATURES).
FEATURES   ?= $(LAMINAR_FEATURES)
CC         ?= cc
CXX        ?= c++
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
LIBDIR     := $(TARGET_DIR)/$(if $(filter dev test,$(PROFILE)),debug,$(PROFILE))
BUILD_C    := $(TARGET_DIR)/c-$(PROFILE)
VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# The SONAME laminar-ffi/build.rs gives liblaminar.so: major.minor while the major is 0, else major.
ABI        := $(shell echo $(VERSION) | awk -F. '{ print ($$1 == 0) ? $$1 "." $$2 : $$1 }')
STRICT     := -Wall -Wextra -Werror -pedantic
SANITIZE   := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g
C_TESTS    := $(sort $(basename $(notdir $(wildcard tests/c/test_*.c))))

.PHONY: lib install header header-check header-compile test-c example-c bench-c go-lib test-go

lib:
	$(CARGO) build -p laminar-ffi --profile $(PROFILE) $(if $(strip $(FEATURES)),--features "$(FEATURES)")
	ln -sf liblaminar.so $(LIBDIR)/liblaminar.so.$(ABI)

install: lib
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/laminar.h $(DESTDIR)$(PREFIX)/include/laminar.h
	install -m 755 $(LIBDIR)/liblaminar.so $(DESTDIR)$(PREFIX)/lib/liblaminar.so.$(VERSION)
	ln -sf liblaminar.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/liblaminar.so.$(ABI)
	ln -sf liblaminar.so.$(ABI) $(DESTDIR)$(PREFIX)/lib/liblaminar.so
	install -m 644 $(LIBDIR)/liblaminar.a $(DESTDIR)$(PREFIX)/lib/liblaminar.a
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' laminar.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/laminar.pc

header:
	scripts/gen-header.sh

header-check:
	scripts/gen-header.sh --check

# The header compiles as strict C99 and C++17, with and without the unstable API.
header-compile:
	@mkdir -p $(BUILD_C)
	printf '#include "laminar.h"\nint main(void) { return laminar_version_number() == LAMINAR_VERSION_NUMBER ? 0 : 1; }\n' > $(BUILD_C)/header.c
	cp $(BUILD_C)/header.c $(BUILD_C)/header.cpp
	$(CC) -std=c99 $(STRICT) -Iinclude -c $(BUILD_C)/header.c -o $(BUILD_C)/header-c99.o
	$(CC) -std=c99 $(STRICT) -DLAMINAR_UNSTABLE -Iinclude -c $(BUILD_C)/header.c -o $(BUILD_C)/header-c99u.o
	$(CXX) -std=c++17 $(STRICT) -Iinclude -c $(BUILD_C)/header.cpp -o $(BUILD_C)/header-cxx17.o
	$(CXX) -std=c++17 $(STRICT) -DLAMINAR_UNSTABLE -Iinclude -c $(BUILD_C)/header.cpp -o $(BUILD_C)/header-cxx17u.o

# Each tests/c/test_<group>.c, built against the header only, run under ASan + UBSan.
test-c: lib header-compile
	@set -e; for t in $(C_TESTS); do \
	  echo "  CC  $$t (asan+ubsan)"; \
	  $(CC) -std=c99 $(STRICT) $(SANITIZE) -Iinclude tests/c/$$t.c -o $(BUILD_C)/$$t \
	    -L$(LIBDIR) -Wl,-rpath,$(LIBDIR) -llaminar -lpthread; \
	  t0=$$(date +%s); \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1 scripts/with-timeout.sh $(or $(C_TEST_TIMEOUT),300) $(BUILD_C)/$$t; \
	  echo "  ok  $$t ($$(( $$(date +%s) - t0 ))s)"; \
	done

# Installs into a scratch prefix, builds examples/c with pkg-config alone, runs it under valgrind.
example-c:
	rm -rf $(BUILD_C)/prefix
	$(MAKE) --no-print-directory install PREFIX=$(BUILD_C)/prefix
	cd examples/c && PKG_CONFIG_PATH=$(BUILD_C)/prefix/lib/pkgconfig \
	  sh -c 'cc -std=c99 -Wall -Wextra -Werror -pedantic -o $(BUILD_C)/example quickstart.c $$(pkg-config --cflags --libs laminar)'
	valgrind --quiet --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite,indirect \
	  --show-leak-kinds=definite,indirect $(BUILD_C)/example

# The C ABI benchmark: ROWS rows pushed through the C ABI and through the Rust API, and the ratio.
ROWS ?= 10000000
bench-c: lib
	@mkdir -p $(BUILD_C)
	$(CC) -std=c99 -O2 $(STRICT) -DLAMINAR_UNSTABLE -Iinclude benches/c/push_bench.c -o $(BUILD_C)/push_bench \
	  -L$(LIBDIR) -Wl,-rpath,$(LIBDIR) -llaminar -lpthread
	$(BUILD_C)/push_bench $(ROWS)

# The Go package links lib/<os>-<arch>/liblaminar.a statically (bindings/go/link_static_*.go):
# this puts the library built by cargo there. `go build`/`go test` need nothing else.
GO_LIB = bindings/go/lib/$(shell go env GOOS 2>/dev/null || echo linux)-$(shell go env GOARCH 2>/dev/null || echo amd64)
go-lib: lib
	@mkdir -p $(GO_LIB)
	cp $(LIBDIR)/liblaminar.a $(GO_LIB)/liblaminar.a

# go vet, the tests with the race detector, the tests with -tags debug (a GC inside every handle
# access), the examples (they are tests), and the W1 benchmark at a tiny size.
test-go: go-lib
	cd bindings/go && go vet ./...
	cd bindings/go && go test -race -count=1 -timeout 10m ./...
	cd bindings/go && go test -tags debug -count=1 -timeout 10m -run 'Test' ./...
	cd bindings/go && LAMINAR_W1_EVENTS=$(or $(W1_EVENTS),100000) go test -timeout 10m -run '^$$' -bench W1 -benchtime 1x ./...
