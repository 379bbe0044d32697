#!/usr/bin/env bash
# The plugin SDK end to end, as a user meets it: install pipe into a prefix, build
# examples/custom_stage out of tree against it, and use the plugin from the installed pipe
# (--plugin, PIPE_PLUGIN_PATH, the graph's plugins: list, which loads only with consent or from
# a trusted directory: docs/security.md), deterministic at 1 and 2 threads;
# a plugin stage that throws fails the run naming plugin, stage, node and sample; the example's
# own Catch2 test (the stage harness, <pipe/testing.h>) builds and passes there too.
#   test_sdk.sh BUILD_DIR SOURCE_DIR          (~10 s on 2 cores once pipe is built)
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test_sdk: FAILED: $*" >&2; exit 1; }
# Only what this script passes may load a plugin.
unset PIPE_PLUGIN_PATH PIPE_ALLOW_PLUGINS
export PIPE_CACHE_DIR="$tmp/cache"

# --- the installed package
cmake --install "$build" --prefix "$tmp/prefix" > "$tmp/install.log" || { cat "$tmp/install.log"; fail "install"; }
p="$tmp/prefix"
pipe="$p/bin/pipe"
[ -x "$pipe" ] || fail "no installed bin/pipe"
for h in "$src"/pipeline/include/pipe/*.h; do
  [ -f "$p/include/pipe/$(basename "$h")" ] || fail "header $(basename "$h") not installed"
done
[ -L "$p/lib/libpipe.so" ] && [ -L "$p/lib/libpipe.so.0" ] || fail "libpipe.so soname links not installed"
[ -d "$p/lib/pipe/plugins" ] || fail "no lib/pipe/plugins (the trusted plugin directory) installed"
for f in pipeConfig.cmake pipeConfigVersion.cmake pipeTargets.cmake; do
  [ -f "$p/lib/cmake/pipe/$f" ] || fail "lib/cmake/pipe/$f not installed"
done
grep -q "add_library(pipe::sdk SHARED IMPORTED)" "$p/lib/cmake/pipe/pipeTargets.cmake" || fail "no pipe::sdk target exported"
# Plugin authors get Torch/oneTBB/OpenCV as imported targets, never pipe's private yaml-cpp/fmt
# or an absolute library path from the build machine.
links=$(grep INTERFACE_LINK_LIBRARIES "$p/lib/cmake/pipe/pipeTargets.cmake")
grep -q '"torch;TBB::tbb;' <<< "$links" || fail "exported links: $links"
grep -qE 'yaml|fmt|/' <<< "$links" && fail "exported links leak private or absolute entries: $links"
# The installed pipe runs the installed libpipe, not the build tree's.
used=$(ldd "$pipe" | awk '$1 == "libpipe.so.0" { print $3 }')
[ "$(realpath "$used")" = "$(realpath "$p/lib/libpipe.so.0")" ] || fail "bin/pipe uses '$used', not $p/lib/libpipe.so.0"

# --- the example, configured and built out of tree against the prefix
cmake -S "$src/examples/custom_stage" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$p" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$tmp/configure.log" 2>&1 || { cat "$tmp/configure.log"; fail "configure"; }
cmake --build "$tmp/build" > "$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; fail "build"; }
grep -qi "warning" "$tmp/build.log" && { cat "$tmp/build.log"; fail "the example builds with warnings"; }
plugin="$tmp/build/libpipe_cutout.so"
[ -f "$plugin" ] || fail "no plugin built"
# Hidden visibility: the entry point is the only C++-visible symbol the plugin defines.
nm -D --defined-only "$plugin" | grep -q " T pipe_plugin_entry$" || fail "pipe_plugin_entry not exported"
# The example's own unit test (test_cutout.cpp, Catch2 + <pipe/testing.h>), built above when
# Catch2 is installed (it is wherever pipe's tests build).
[ -x "$tmp/build/test_cutout" ] || fail "the example's test_cutout was not built"
ctest --test-dir "$tmp/build" --output-on-failure > "$tmp/ctest.log" 2>&1 || { cat "$tmp/ctest.log"; fail "the example's test"; }

# --- pipe stages: through --plugin and PIPE_PLUGIN_PATH, and not without them
# (Captured first: grep -q closing the pipe early would fail the pipeline under pipefail.)
listed=$("$pipe" --plugin "$plugin" stages)
grep -q "^cutout  (per-sample map, parallel, image -> image, random" <<< "$listed" || fail "--plugin: cutout not listed"
listed=$(PIPE_PLUGIN_PATH="$tmp/build" "$pipe" stages)
grep -q "^cutout " <<< "$listed" || fail "PIPE_PLUGIN_PATH (directory): cutout not listed"
listed=$(PIPE_PLUGIN_PATH="/nonexistent:$plugin" "$pipe" stages)
grep -q "^cutout " <<< "$listed" || fail "PIPE_PLUGIN_PATH (file): cutout not listed"
listed=$("$pipe" stages)
grep -q "^cutout " <<< "$listed" && fail "cutout listed without loading the plugin"

# --- the example graph, which loads its plugin from build/ next to it (plugins: list only)
mkdir -p "$tmp/g"
cp "$src/examples/custom_stage/augmented_cutout.yaml" "$tmp/g/"
ln -s "$tmp/build" "$tmp/g/build"
g="$tmp/g/augmented_cutout.yaml"
weights=(--set "nodes.features.weights=$src/models/small_vgg_fmnist.pt")
small=("${weights[@]}" --set "data.per_class=[40, 10, 10]" --set train.epochs=2 --no-progress)
# The graph's plugin is code: without consent nothing of it loads, and the graph does not validate.
set +e
"$pipe" validate "$g" "${weights[@]}" > "$tmp/refused.log" 2>&1
rc=$?
set -e
[ $rc -eq 2 ] || { cat "$tmp/refused.log"; fail "validate without consent: expected exit 2, got $rc"; }
line=$(grep -n '^plugins:' "$g" | cut -d: -f1)
grep -qF "$g:$line:11: error: plugin 'build/libpipe_cutout.so' ($tmp/g/build/libpipe_cutout.so) not loaded: plugins named by a graph run code as you; if you trust this graph, pass --allow-plugins (or set PIPE_ALLOW_PLUGINS=1), or add the plugin's directory to PIPE_PLUGIN_PATH (docs/security.md)" "$tmp/refused.log" \
  || { cat "$tmp/refused.log"; fail "validate without consent: message"; }
"$pipe" validate "$g" "${weights[@]}" --no-plugins > "$tmp/noplugins.log" 2>&1 || { cat "$tmp/noplugins.log"; fail "validate --no-plugins"; }
grep -qF "warning: plugin 'build/libpipe_cutout.so' not loaded (--no-plugins)" "$tmp/noplugins.log" || { cat "$tmp/noplugins.log"; fail "--no-plugins warning"; }
"$pipe" validate "$g" "${weights[@]}" --allow-plugins > "$tmp/validate.log" 2>&1 || { cat "$tmp/validate.log"; fail "validate --allow-plugins"; }
PIPE_ALLOW_PLUGINS=1 "$pipe" validate "$g" "${weights[@]}" > "$tmp/validate.log" 2>&1 || { cat "$tmp/validate.log"; fail "PIPE_ALLOW_PLUGINS=1 validate"; }
PIPE_PLUGIN_PATH="$tmp/build" "$pipe" validate "$g" "${weights[@]}" > "$tmp/validate.log" 2>&1 || { cat "$tmp/validate.log"; fail "validate, plugin in PIPE_PLUGIN_PATH"; }
# The installed plugin directory is trusted: a graph naming a plugin there needs no flag.
cp "$plugin" "$p/lib/pipe/plugins/"
sed "s|^plugins: .*|plugins: [$p/lib/pipe/plugins/libpipe_cutout.so]|" "$g" > "$tmp/g/installed.yaml"
"$pipe" validate "$tmp/g/installed.yaml" "${weights[@]}" > "$tmp/validate.log" 2>&1 || { cat "$tmp/validate.log"; fail "validate, plugin in lib/pipe/plugins"; }
small+=(--allow-plugins)
for t in 1 2; do
  "$pipe" run "$g" "${small[@]}" --threads $t --out "$tmp/run$t" > "$tmp/run$t.log" 2>&1 || { cat "$tmp/run$t.log"; fail "run at $t threads"; }
  grep -qE '"test_acc": [0-9.e+-]+' "$tmp/run$t/summary.json" || fail "no test_acc in summary.json"
  # 2 classes x 40 training images x 2 epochs; never on validation or test images.
  grep -A2 '"node": "cut"' "$tmp/run$t/profile.json" | grep -q '"items": 160,' || fail "cutout did not run on exactly the 160 training samples"
done
strip_times() { sed 's/,"seconds".*//' "$1"; }
[ "$(wc -l < "$tmp/run1/metrics.jsonl")" -eq 2 ] || fail "expected 2 metrics lines"
[ "$(strip_times "$tmp/run1/metrics.jsonl")" = "$(strip_times "$tmp/run2/metrics.jsonl")" ] || {
  cat "$tmp/run1/metrics.jsonl" "$tmp/run2/metrics.jsonl"; fail "metrics differ between 1 and 2 threads"; }
# ... and the stage does something: with p = 0 (no erasing) training goes otherwise.
"$pipe" run "$g" "${small[@]}" --set nodes.cut.p=0 --threads 2 --out "$tmp/run0" > "$tmp/run0.log" 2>&1 || { cat "$tmp/run0.log"; fail "run with p=0"; }
[ "$(strip_times "$tmp/run1/metrics.jsonl")" != "$(strip_times "$tmp/run0/metrics.jsonl")" ] || fail "cutout with p=0.5 changed nothing"

# --- a plugin stage that throws: exit 1, one line naming node, stage, plugin and sample
set +e
"$pipe" run "$g" "${small[@]}" --set nodes.cut.size=100 --out "$tmp/bad" > "$tmp/bad.log" 2>&1
rc=$?
set -e
[ $rc -eq 1 ] || { cat "$tmp/bad.log"; fail "expected exit 1, got $rc"; }
grep -qE "^pipe: error: node 'cut' \(stage 'cutout' from plugin .*/libpipe_cutout.so \(cutout 1.0.0\)\) failed on sample train#[0-9]+ \(fashion-mnist:train-images-idx3-ubyte.gz#[0-9]+\): cutout size 100 exceeds the 32x32 image$" "$tmp/bad.log" \
  || { cat "$tmp/bad.log"; fail "error message"; }
echo "test_sdk: ok"
