#!/usr/bin/env bash
# The plugin SDK end to end, as a user meets it: install pipe into a prefix, build
# examples/custom_stage out of tree against it, and use the plugin from the installed pipe
# (--plugin, PIPE_PLUGIN_PATH, the graph's plugins: list), deterministic at 1 and 2 threads;
# a plugin stage that throws fails the run naming plugin, stage, node and sample.
#   test_sdk.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test_sdk: FAILED: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$tmp/prefix" > "$tmp/install.log"
pipe="$tmp/prefix/bin/pipe"
[ -x "$pipe" ] || fail "no installed pipe"

cmake -S "$src/examples/custom_stage" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$tmp/configure.log" || { cat "$tmp/configure.log"; fail "configure"; }
cmake --build "$tmp/build" > "$tmp/build.log" || { cat "$tmp/build.log"; fail "build"; }
plugin="$tmp/build/libpipe_cutout.so"
[ -f "$plugin" ] || fail "no plugin built"

# (Captured first: grep -q closing the pipe early would fail the pipeline under pipefail.)
listed=$("$pipe" --plugin "$plugin" stages)
grep -q "^cutout  (per-sample map, parallel, image -> image, random" <<< "$listed" || fail "--plugin: cutout not listed"
listed=$(PIPE_PLUGIN_PATH="$tmp/build" "$pipe" stages)
grep -q "^cutout " <<< "$listed" || fail "PIPE_PLUGIN_PATH: cutout not listed"
listed=$("$pipe" stages)
grep -q "^cutout " <<< "$listed" && fail "cutout listed without loading the plugin"

# The example graph finds its plugin at build/ next to it.
mkdir -p "$tmp/g"
cp "$src/examples/custom_stage/augmented_cutout.yaml" "$tmp/g/"
ln -s "$tmp/build" "$tmp/g/build"
g="$tmp/g/augmented_cutout.yaml"
small=(--set "nodes.features.weights=$src/models/small_vgg_fmnist.pt" --set "data.per_class=[40, 10, 10]"
       --set train.epochs=2 --no-progress)
"$pipe" validate "$g" --set "nodes.features.weights=$src/models/small_vgg_fmnist.pt" > /dev/null || fail "validate"
export PIPE_CACHE_DIR="$tmp/cache"
for t in 1 2; do
  "$pipe" run "$g" "${small[@]}" --threads $t --out "$tmp/run$t" > "$tmp/run$t.log" 2>&1 || { cat "$tmp/run$t.log"; fail "run at $t threads"; }
  grep -q '"test_acc": 0' "$tmp/run$t/summary.json" || grep -q '"test_acc": 1' "$tmp/run$t/summary.json" || fail "no test_acc"
  # 2 classes x 40 training images x 2 epochs; never on validation or test images.
  grep -A2 '"node": "cut"' "$tmp/run$t/profile.json" | grep -q '"items": 160,' || fail "cutout did not run on exactly the 160 training samples"
done
strip_times() { sed 's/, "seconds".*//' "$1"; }
[ "$(strip_times "$tmp/run1/metrics.jsonl")" = "$(strip_times "$tmp/run2/metrics.jsonl")" ] || fail "metrics differ between 1 and 2 threads"

# A plugin stage that throws: exit 1, naming node, stage, plugin and sample.
set +e
"$pipe" run "$g" "${small[@]}" --set nodes.cut.size=100 --out "$tmp/bad" > "$tmp/bad.log" 2>&1
rc=$?
set -e
[ $rc -eq 1 ] || { cat "$tmp/bad.log"; fail "expected exit 1, got $rc"; }
grep -qE "^pipe: error: node 'cut' \(stage 'cutout' from plugin .*libpipe_cutout.so \(cutout 1.0.0\)\) failed on sample train#[0-9]+ \(fashion-mnist:train-images-idx3-ubyte.gz#[0-9]+\): cutout size 100 exceeds the 32x32 image$" "$tmp/bad.log" \
  || { cat "$tmp/bad.log"; fail "error message"; }
echo "test_sdk: ok"
