#!/usr/bin/env bash
# Sanitizer and fuzz jobs (docs/reliability.md); .ci/run calls all three after the tests.
#
#   bash scripts/sanitize.sh asan   # ASan+UBSan build (build-asan/): all Catch2 tests (unit, executor, end to end)
#   bash scripts/sanitize.sh tsan   # TSan build (build-tsan/) on a TSan-built oneTBB: executor and cache tests
#   bash scripts/sanitize.sh fuzz   # clang libFuzzer targets (build-fuzz/: graph, decode, cache, torch_pickle): regressions, then FUZZ_SECONDS each
#   bash scripts/sanitize.sh all
#
# Every job fails (exit != 0) on any sanitizer report, failed test or fuzzer finding.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install_missing.sh
ROOT=$PWD

# clang + its runtimes (libFuzzer) for the fuzz job; dpkg-dev (dpkg-source) to unpack
# Debian's oneTBB source for the TSan job; libxxhash-dev and nlohmann-json3-dev (also in
# scripts/dev.sh) for the cache store that fuzz_cache links. The rest comes from scripts/dev.sh.
PACKAGES=(clang-14 libclang-rt-14-dev dpkg-dev libxxhash-dev nlohmann-json3-dev)
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
# Every sanitizer report exits with this status (tests/process.h: kSanitizerExit).
export SANITIZER_EXIT=86

# Tests per job, as ctest labels (one label per test executable, tests/CMakeLists.txt).
# ASan+UBSan: everything but the labels in ASAN_SKIP, so a new test file is covered without
# being listed: every Catch2 test (end-to-end regimes and `pipe run` processes included, all
# fast enough) and the canaries. sdk_install_build_run_plugin (an install and an out-of-tree
# build) and bench_smoke (a benchmark) stay in the normal suite; regimes-full (both regimes
# at their defaults) is opt-in everywhere.
ASAN_SKIP=(sdk bench regimes-full)
# TSan: the executor, the cache store, the cache under concurrent processes, and both regimes
# (the cached regime's cache cut, the augmented one at 1 and 2 threads).
TSAN_TESTS=(test_executor test_cache_store test_cache_crash test_regimes)

export CCACHE_BASEDIR=$ROOT CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime

log() { echo "sanitize: $*"; }

labels() { local IFS='|'; echo "^($*)\$"; }

timed() {
  local name=$1 t0=$SECONDS
  shift
  local rc=0
  "$@" || rc=$?
  log "$name took $((SECONDS - t0)) s$([ $rc -eq 0 ] || echo ", FAILED (exit $rc)")"
  return $rc
}

build_targets() {
  local dir=$1
  shift
  cmake --build "$dir" -j 2 --target "$@"
}

asan() {
  [ -f build-asan/build.ninja ] ||
    CXX=g++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPIPE_SANITIZE=address,undefined
  timed "asan build" cmake --build build-asan -j 2
  # Leak detection on, and no LSan suppressions: none of these tests leaks, LibTorch included.
  # UB is fatal (also compiled in); ubsan.supp holds one oneTBB header defect.
  # exitcode=86 (SANITIZER_EXIT): a report exits with a status of its own, never 1 or 2, which
  # tests expecting a failed run would take for pipe's own (tests/process.h checks both).
  export ASAN_OPTIONS=detect_leaks=1:check_initialization_order=1:detect_stack_use_after_return=1:halt_on_error=1:exitcode=$SANITIZER_EXIT
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=$SANITIZER_EXIT:suppressions=$ROOT/tests/sanitizers/ubsan.supp
  (cd build-asan && timed "asan tests" ctest -j 2 --output-on-failure --timeout 900 -LE "$(labels "${ASAN_SKIP[@]}")")
}

# Debian's libtbb is not instrumented, so TSan cannot see the happens-before edges of
# oneTBB's task queues and reports every handoff between flow-graph nodes as a race. The
# same oneTBB version is rebuilt from Debian's source package with TBB_SANITIZE=thread and
# put first on the library path (it replaces libtbb.so.12 for LibTorch too).
tsan_tbb() {
  local prefix=$ROOT/build-tsan/onetbb
  [ -f "$prefix/lib/libtbb.so.12" ] && return 0
  local version work=$ROOT/build-tsan/tbb-src
  version=$(dpkg-query -W -f='${Version}' libtbb-dev)
  rm -rf "$work" && mkdir -p "$work/lists/partial"
  # A private apt state with deb-src lines: the system's apt configuration is left alone.
  # The lines mirror the machine's own bookworm sources (a CI machine may use a mirror or
  # snapshot instead of deb.debian.org); deb.debian.org only if none is configured.
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' |
    awk '$2 ~ /^bookworm/ { print "deb-src " $1 " " $2 " " $3 }' | sort -u > "$work/sources.list"
  [ -s "$work/sources.list" ] ||
    printf 'deb-src http://deb.debian.org/debian %s main\n' bookworm bookworm-updates > "$work/sources.list"
  local apt=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
             -o "Dir::State::Lists=$work/lists" -o APT::Sandbox::User=root)
  apt-get "${apt[@]}" update -qq
  (cd "$work" && apt-get "${apt[@]}" source -qq "onetbb=$version")
  local src
  src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'onetbb-*' | head -1)
  # -Wno-tsan: GCC warns at each of oneTBB's seq_cst fences (47 lines of log) that TSan does
  # not model them. An unmodelled fence can only hide a happens-before edge, i.e. add false
  # reports, never hide a race; the tests below run with none, and the canaries show a real
  # race is still reported.
  cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=g++ \
    -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_FLAGS=-Wno-tsan -DTBB_SANITIZE=thread -DTBB_TEST=OFF -DTBB_STRICT=OFF -DTBBMALLOC_BUILD=OFF \
    -DTBB_DISABLE_HWLOC_AUTOMATIC_SEARCH=ON -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib
  cmake --build "$work/build" -j 2
  cmake --install "$work/build"
  rm -rf "$work"
}

tsan() {
  timed "tsan oneTBB build" tsan_tbb
  local tbb=$ROOT/build-tsan/onetbb
  [ -f build-tsan/build.ninja ] ||
    CXX=g++ cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPIPE_SANITIZE=thread \
      -DTBB_DIR="$tbb/lib/cmake/TBB"
  timed "tsan build" build_targets build-tsan pipe_cli sanitizer_canary "${TSAN_TESTS[@]}"
  export LD_LIBRARY_PATH=$tbb/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # libgomp (LibTorch's OpenMP) is not instrumented either and synchronises through futexes
  # TSan cannot see: one OpenMP thread, so torch ops run on the calling (instrumented) thread.
  export OMP_NUM_THREADS=1
  # With oneTBB instrumented these tests are clean; tsan.supp holds one lock-order report
  # inside libgdal (OpenCV's codec initialisation), which no pipe lock takes part in.
  export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:exitcode=$SANITIZER_EXIT:suppressions=$ROOT/tests/sanitizers/tsan.supp
  (cd build-tsan && timed "tsan tests" ctest -j 2 --output-on-failure --timeout 1800 -L "$(labels "${TSAN_TESTS[@]}" sanitizer_canary)")
}

fuzz() {
  local targets="graph;decode;cache;torch_pickle"
  [ -f build-fuzz/build.ninja ] || CXX=clang++-14 cmake -S tests/fuzz -B build-fuzz -G Ninja
  # A build-fuzz/ configured before a target was added keeps its old list: set it.
  cmake build-fuzz -DPIPE_FUZZ_TARGETS="$targets" > /dev/null
  timed "fuzz build" cmake --build build-fuzz -j 2
  local t
  for t in ${targets//;/ }; do
    # Every committed finding first: a regression fails here before any fuzzing.
    timed "fuzz_$t regressions" build-fuzz/fuzz_$t -runs=0 tests/fuzz/regressions/$t tests/fuzz/corpus/$t
    local work=build-fuzz/work-$t
    rm -rf "$work" && mkdir -p "$work/corpus" "$work/artifacts"
    # New inputs go to the scratch corpus; the committed seeds are read only. A crash,
    # leak, UB, timeout (>10 s) or out-of-memory (>2 GB: a pixel-limit bypass, a cache
    # manifest's sizes believed) exits != 0.
    timed "fuzz_$t ${FUZZ_SECONDS} s" build-fuzz/fuzz_$t -max_total_time="$FUZZ_SECONDS" -timeout=10 \
      -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
      "$work/corpus" tests/fuzz/corpus/$t > "$work/log" 2>&1 ||
      { tail -60 "$work/log"; log "fuzz_$t found a problem: $(ls "$work/artifacts")"; return 1; }
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$work/log" | sed "s/^/sanitize: fuzz_$t /"
  done
}

job="${1:-all}"
install_missing sanitize "${PACKAGES[@]}"
case "$job" in
  asan) asan ;;
  tsan) tsan ;;
  fuzz) fuzz ;;
  all) asan; tsan; fuzz ;;
  *) echo "usage: bash scripts/sanitize.sh asan|tsan|fuzz|all" >&2; exit 2 ;;
esac
