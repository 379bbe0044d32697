#!/usr/bin/env bash
# pipe bench --smoke, then check its bench.json. Usage: smoke.sh PIPE CMAKE OUT_DIR
set -euo pipefail
pipe=$1 cmake=$2 out=$3
mkdir -p "$out"
rm -f "$out/bench.json"
start=$SECONDS
rc=0; "$pipe" bench --smoke --out "$out/bench.json" || rc=$?
[ "$rc" -eq 0 ] || { echo "pipe bench --smoke exited $rc"; exit 1; }
echo "pipe bench --smoke: $((SECONDS - start)) s"
"$cmake" -DJSON="$out/bench.json" -P "$(dirname "$0")/check_bench_json.cmake"
# --only runs just the matching figures; a name matching nothing is a usage error (2).
"$pipe" bench --smoke --only 'CACHED HEAD' --out "$out/only.json" > /dev/null
n=$(grep -c '"name"' "$out/only.json")
[ "$n" -eq 1 ] || { echo "--only 'CACHED HEAD' wrote $n figures, expected 1"; exit 1; }
rc=0; "$pipe" bench --smoke --only no-such-figure --out "$out/none.json" 2> /dev/null || rc=$?
[ "$rc" -eq 2 ] || { echo "--only no-such-figure exited $rc, expected 2"; exit 1; }
