# Thin wrapper over CMake. `make demo` and `make test` work on a fresh Debian machine.
BUILD      ?= build
ASAN_BUILD ?= build-asan
BENCH_BUILD ?= build-release
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

# Debian packages the build, tests, demo and benchmarks need. libzmq3-dev:
# the RPC layer's ZeroMQ transport (optional in CMake, always built and
# tested here) and the ZeroMQ anchor of bench_queue. libopenmpi-dev and
# openmpi-bin: libmproc_mpi, the Executor on MPI ranks (optional in CMake,
# built and tested here under mpirun).
DEB_DEPS = cmake make gcc g++ pkg-config python3 python3-msgpack libc6-dev libmsgpack-dev libssl-dev clang libzmq3-dev libopenmpi-dev openmpi-bin
# What only `make bench` needs beyond DEB_DEPS: mpi4py, the anchor of
# bench_mpi (run with /usr/bin/python3, Debian's).
BENCH_DEB_DEPS = python3-mpi4py

.PHONY: all build deps bench-deps demo test test-normal test-asan test-fuzz bench install clean

all: build

deps:
	@bash scripts/deps.sh $(DEB_DEPS)

bench-deps:
	@bash scripts/deps.sh $(DEB_DEPS) $(BENCH_DEB_DEPS)

build:
	cmake -S . -B $(BUILD) -DMPROC_WERROR=ON $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j$(JOBS)

demo: deps build
	bash examples/tour.sh $(BUILD)

test: deps test-normal test-asan test-fuzz

test-normal: build
	cd $(BUILD) && ctest --output-on-failure -j1

# The same suite again under AddressSanitizer + UBSan.
test-asan:
	cmake -S . -B $(ASAN_BUILD) -DMPROC_WERROR=ON -DMPROC_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
	  -DMPROC_BUILD_BENCH=OFF $(CMAKE_FLAGS)
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j1

# libFuzzer targets (tests/fuzz/fuzz_*.c), FUZZ_SECONDS each.
FUZZ_SECONDS ?= 10
test-fuzz:
	bash tests/fuzz/run.sh $(FUZZ_SECONDS) build-fuzz

bench: bench-deps
	cmake -S . -B $(BENCH_BUILD) -DCMAKE_BUILD_TYPE=Release -DMPROC_BUILD_TESTS=OFF $(CMAKE_FLAGS)
	cmake --build $(BENCH_BUILD) -j$(JOBS)
	cmake --build $(BENCH_BUILD) --target bench

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(BENCH_BUILD) build-fuzz
