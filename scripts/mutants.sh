#!/usr/bin/env bash
# Mutation check: plants small bugs, one at a time, and requires the test suite to catch each
# (docs/reliability.md, "Mutation check"). Not part of .ci/run: it rebuilds once per mutant.
#
#   bash scripts/mutants.sh              # every mutant
#   bash scripts/mutants.sh 'rng|cache'  # only the mutants whose name matches a regex
#   MUTANT_DIR=/tmp/pipe-mutants JOBS=2 bash scripts/mutants.sh
#
# The tree is copied (tar, build directories and .git left out) to $MUTANT_DIR/src and built
# in $MUTANT_DIR/build: the working tree is never modified, so other people's builds and
# edits are safe while it runs. First the unmutated copy must build and pass every test the
# mutants use; then each mutant replaces one exact piece of text in one file (it must occur
# exactly once), rebuilds incrementally, runs the tests named for it (ctest -R), and restores
# the file. A mutant is caught when a test fails; the table at the end names the tests that
# failed. Exit status: 0 when every mutant applied and was caught, 1 otherwise.
set -uo pipefail
# The whole script is one compound command, read before it runs: editing this file (or the
# tree it came from) while it runs cannot change what it does.
{
shopt -u patsub_replacement 2> /dev/null || true  # bash 5.2: "&" in ${x/a/b} is the match
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${MUTANT_DIR:-/tmp/pipe-mutants}
JOBS=${JOBS:-1}
FILTER=${1:-}
SRC=$WORK/src
BUILD=$WORK/build

# name | file | original text | mutated text | ctest -R regex of the tests that should catch it
# (test names are Catch2 test case names; "|" cannot appear in the texts).
MUTANTS=$(cat <<'EOF'
augment-degrees|stages/augment.cpp|d.theta * M_PI / 180.0|d.theta * M_PI / 200.0|^augment
augment-flip-p|stages/augment.cpp|if (hflip_) d.flip_h = rng.bernoulli(0.5);|if (hflip_) d.flip_h = rng.bernoulli(0.4);|^augment stage
decode-no-bgr2rgb|stages/decode.cpp|cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);|rgb = bgr;|^decode|decode seeds
decode-interp-default|stages/decode.cpp|const auto kInterp = interpolation_param(cv::INTER_LINEAR);|const auto kInterp = interpolation_param(cv::INTER_AREA);|golden features|decode seeds|^decode
convbase-no-rescale|stages/torch_util.cpp|scale[c] = static_cast<float>(norm.rescale / sd);|scale[c] = static_cast<float>(1.0 / sd);|golden features
init-glorot-limit|stages/torch_util.cpp|std::sqrt(6.0 / static_cast<double>(w.size(0) + w.size(1)))|std::sqrt(3.0 / static_cast<double>(w.size(0) + w.size(1)))|Glorot
rmsprop-rho|stages/dense_head.cpp|RMSpropOptions(lr_).alpha(0.9)|RMSpropOptions(lr_).alpha(0.99)|Keras' formulas
adam-epsilon|stages/dense_head.cpp|AdamOptions(lr_).eps(1e-7)|AdamOptions(lr_).eps(1e-8)|Keras' formulas
cache-key-seed|pipeline/src/plan.cpp|"{{random '{}' seed {}}}", n.name, g.train.seed)|"{{random '{}' seed {}}}", n.name, 1)|cache keys cover|regime B and its views
cache-key-views|pipeline/src/plan.cpp|h.field(fmt::format("views={}", views));|h.field("views");|cache keys cover|regime B and its views
executor-no-sequencer|pipeline/src/executor.cpp|  if (pass.ordered) {|  if (false && pass.ordered) {|feed order|seeded graph
executor-batch-order|pipeline/src/executor.cpp|for (Item& it : items) b.samples.push_back(std::move(it.s));|for (Item& it : items) b.samples.insert(b.samples.begin(), std::move(it.s));|feed order|seeded graph
executor-cap|pipeline/src/executor.cpp|const int64_t cap = std::max<int64_t>(pass.in_flight, 2 * topo.held + 2);|const int64_t cap = std::max<int64_t>(pass.in_flight + 4, 2 * topo.held + 2);|samples in flight
rng-epoch|pipeline/src/rng.cpp|const uint64_t s = mix(mix(epoch) ^ mix(sample + 0x1234567ull)|const uint64_t s = mix(mix(0) ^ mix(sample + 0x1234567ull)|^augment stage
rng-view|pipeline/src/rng.cpp|mix(view + 0x7654321ull * 3)|mix(0x7654321ull * 3)|^augment stage|distinct augmented views
spec-random-before-cache|pipeline/src/spec.cpp|if (s.kind == StageKind::cache && random_up[i] && n.params.integer("views") == 0)|if (false && s.kind == StageKind::cache && random_up[i])|malformed graph
spec-batch-default|pipeline/src/spec.cpp|{"batch", ParamType::integer, "", ParamValue{int64_t{20}}|{"batch", ParamType::integer, "", ParamValue{int64_t{32}}|valid graph resolves defaults|graph seeds
mnist-val-overlaps-train|stages/fashion_mnist.cpp|take(Split::validation, static_cast<int64_t>(idx.size()) - 1, counts[1], -1);|take(Split::validation, 0, counts[1], 1);|fashion_mnist source
resume-generator|stages/supervised_sink.h|    gen_.set_state(state);|    (void)state;|graphs/cached.yaml: same|SIGINT stops a run
cache-no-checksum|pipeline/src/cache_store.cpp|  if (sum != checksum)|  if (false && sum != checksum)|feature cache entries|cache seeds
EOF
)

log() { echo "mutants: $*"; }

# Brings $SRC to the tree's current content: a snapshot (tar) first, then only files whose
# content differs are copied over (with a new modification time, so exactly those rebuild),
# and files gone from the tree are removed (sources are globbed). Keeping the tree's own
# times instead would let an object built from an older copy look newer than the source.
copy_tree() {
  local stage=$WORK/snapshot f
  rm -rf "$stage" && mkdir -p "$stage" "$SRC"
  tar -C "$ROOT" --exclude='./build*' --exclude='./.git' --exclude='./examples/custom_stage/build' -cf - . |
    tar -C "$stage" -xf -
  (cd "$SRC" && find . -type f) | while IFS= read -r f; do [ -e "$stage/$f" ] || rm -f "$SRC/$f"; done
  (cd "$stage" && find . -type f) | while IFS= read -r f; do
    cmp -s "$stage/$f" "$SRC/$f" || { mkdir -p "$(dirname "$SRC/$f")" && cp "$stage/$f" "$SRC/$f"; }
  done
  rm -rf "$stage"
}

build() {
  # The mutated file, libpipe and the CLI; test executables link libpipe dynamically and are
  # not relinked (CMAKE_LINK_DEPENDS_NO_SHARED).
  cmake --build "$BUILD" -j "$JOBS" > "$WORK/build.log" 2>&1
}

# Runs the tests matching $1 (a ctest -R regex); prints the names of those that failed.
run_tests() {
  local out=$WORK/ctest.log
  (cd "$BUILD" && ctest -j "$JOBS" --timeout 900 -R "$1" -LE 'regimes-full|sdk|bench' > "$out" 2>&1)
  local rc=$?
  grep -E '^\s*[0-9]+/[0-9]+ Test\s+#[0-9]+: .*(\*\*\*Failed|\*\*\*Timeout|\*\*\*Exception|Not Run)' "$out" |
    sed -E 's/^.*Test +#[0-9]+: (.*) \.\.\..*$/\1/; s/ +\*\*\*.*$//' | sed 's/ *$//'
  grep -q "No tests were found" "$out" && echo "(no test matches '$1')"
  return $rc
}

export CCACHE_BASEDIR=$WORK CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime

log "copying the tree to $SRC"
copy_tree
if [ ! -f "$BUILD/build.ninja" ]; then
  CXX=g++ cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_LINK_DEPENDS_NO_SHARED=ON \
    > "$WORK/configure.log" 2>&1 || { cat "$WORK/configure.log"; exit 1; }
fi
cmake "$BUILD" > /dev/null
start=$SECONDS
log "baseline: building the unmutated copy"
build || { tail -30 "$WORK/build.log"; log "the unmutated copy does not build"; exit 1; }

# The union of every selected mutant's tests must pass unmutated.
all_tests=""
while IFS='|' read -r name file old new tests; do
  [ -z "$name" ] && continue
  [[ -n "$FILTER" && ! "$name" =~ $FILTER ]] && continue
  all_tests="${all_tests:+$all_tests|}$tests"
done <<< "$MUTANTS"
[ -n "$all_tests" ] || { log "no mutant matches '$FILTER'"; exit 1; }
log "baseline: running the tests the mutants use"
failed=$(run_tests "$all_tests") || { echo "$failed"; tail -40 "$WORK/ctest.log"; log "the unmutated copy fails tests"; exit 1; }
log "baseline passed ($((SECONDS - start)) s)"

table="| mutant | file | change | caught by |\n|---|---|---|---|\n"
survivors=0
while IFS='|' read -r name file old new tests; do
  [ -z "$name" ] && continue
  [[ -n "$FILTER" && ! "$name" =~ $FILTER ]] && continue
  t0=$SECONDS
  target=$SRC/$file
  original=$(cat "$target"; printf x)
  original=${original%x}
  rest=${original#*"$old"}
  if [ "$rest" = "$original" ] || [[ "$rest" == *"$old"* ]]; then
    log "$name: the text to mutate does not occur exactly once in $file"
    table+="| $name | \`$file\` | NOT APPLIED (text not found once) | - |\n"
    survivors=$((survivors + 1))
    continue
  fi
  printf '%s' "${original/"$old"/"$new"}" > "$target"
  if ! build; then
    caught="(does not compile)"
    grep -m3 "error" "$WORK/build.log"
    survivors=$((survivors + 1))
  else
    failed=$(run_tests "$tests")
    if [ $? -eq 0 ]; then
      caught="SURVIVED"
      survivors=$((survivors + 1))
    else
      caught=$(echo "$failed" | paste -sd ';' | sed 's/;/; /g')
      [ -n "$caught" ] || caught="(ctest failed; see $WORK/ctest.log)"
    fi
  fi
  printf '%s' "$original" > "$target"
  touch "$target"
  log "$name: $caught ($((SECONDS - t0)) s)"
  table+="| $name | \`$file\` | \`$old\` -> \`$new\` | $caught |\n"
done <<< "$MUTANTS"

build > /dev/null 2>&1 || true  # leave the copy built unmutated
echo
printf '%b' "$table"
echo
log "$survivors mutant(s) not caught; total $((SECONDS - start)) s"
[ "$survivors" -eq 0 ]
exit
}
