#!/usr/bin/env bash
# The GPU check of issue 14, prepared for a machine with an NVIDIA GPU and a Python whose torch
# has CUDA: builds pipe against that torch's LibTorch, then measures builtin:vgg16 (random
# weights) at 150 and 224 px on generated JPEGs and prints a markdown table for
# docs/performance.md (section "GPU").
#
#   bash scripts/gpu_check.sh [DEBS]      # DEBS (or GPU_CHECK_DEBS): Debian .debs unpacked with
#                                         # `dpkg -x`, for oneTBB, OpenCV, yaml-cpp, fmt, spdlog, CLI11,
#                                         # nlohmann-json, xxhash when the system lacks them
# Environment: GPU_CHECK_BUILD (build dir, default build-gpu), GPU_CHECK_WORK (JPEGs, runs, cache;
# default /tmp/pipe-gpu-check), GPU_CHECK_IMAGES (training JPEGs per size, default 4096),
# GPU_CHECK_JOBS (default nproc), GPU_CHECK_BUILD_TYPE (default Release), GPU_CHECK_TORCH_PREFIX
# (a LibTorch folder instead of Python's), GPU_CHECK_ALLOW_CPU_BUILD=1 (without a CUDA torch:
# build against whatever LibTorch CMake finds, e.g. Debian's CPU one, then stop before the GPU runs).
# Exit: 0 table printed, 1 a step failed, 2 no CUDA (after building when allowed).
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=${1:-${GPU_CHECK_DEBS:-}}
BUILD=${GPU_CHECK_BUILD:-build-gpu}
WORK=${GPU_CHECK_WORK:-/tmp/pipe-gpu-check}
N=${GPU_CHECK_IMAGES:-4096}
JOBS=${GPU_CHECK_JOBS:-$(nproc)}
PY=${PYTHON:-python3}
say() { echo "gpu_check: $*" >&2; }
no_cuda() { say "$*"; say "stopping before the GPU runs (exit 2)"; exit 2; }

# ---- 1. LibTorch: the one inside Python's torch, with CUDA
torch_prefix=${GPU_CHECK_TORCH_PREFIX:-$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)}
torch_cuda=$("$PY" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null || true)
if [ -z "$torch_cuda" ]; then
  msg="$PY has no CUDA-enabled torch (torch.version.cuda is empty or torch is missing)"
  [ "${GPU_CHECK_ALLOW_CPU_BUILD:-0}" = 1 ] || no_cuda "$msg; GPU_CHECK_ALLOW_CPU_BUILD=1 builds anyway"
  say "$msg; building against the LibTorch CMake finds (GPU_CHECK_ALLOW_CPU_BUILD=1)"
elif [ "$("$PY" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')" != 1 ] && [ -z "${GPU_CHECK_TORCH_PREFIX:-}" ]; then
  # Debian's OpenCV, yaml-cpp and fmt take std::string in the C++11 ABI; older wheels use the old one.
  say "this torch was built with the pre-C++11 ABI and cannot link with Debian's libraries:"
  say "use a recent wheel built with the C++11 ABI, or unpack a cxx11-ABI LibTorch zip and set GPU_CHECK_TORCH_PREFIX to it"
  exit 1
elif ! command -v nvcc >/dev/null && [ -z "${CUDAToolkit_ROOT:-${CUDA_HOME:-}}" ]; then
  say "warning: no nvcc on PATH nor CUDAToolkit_ROOT/CUDA_HOME: LibTorch's CMake config needs the CUDA toolkit"
fi

# ---- 2. Configure and build (no tests): Torch and the unpacked .debs on CMAKE_PREFIX_PATH
prefixes=$torch_prefix
if [ -n "$DEBS" ]; then
  DEBS=$(cd "$DEBS" && pwd)
  prefixes="$prefixes;$DEBS/usr"
  export LD_LIBRARY_PATH="$DEBS/usr/lib/x86_64-linux-gnu:$DEBS/usr/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export CPATH="$DEBS/usr/include${CPATH:+:$CPATH}"  # headers found by path only (xxhash.h)
fi
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime CCACHE_NOHASHDIR=1
mkdir -p "$WORK"
CXX=${CXX:-g++} cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE="${GPU_CHECK_BUILD_TYPE:-Release}" \
  -DPIPE_BUILD_TESTS=OFF -DCMAKE_PREFIX_PATH="${prefixes#;}" >"$WORK/cmake.log" 2>&1 \
  || { tail -30 "$WORK/cmake.log" >&2; say "configure failed (log: $WORK/cmake.log)"; exit 1; }
cmake --build "$BUILD" -j "$JOBS" --target pipe
PIPE=$BUILD/pipe

# ---- 3. Data: smooth random JPEGs (a random 8x8 image upsampled: decode costs like a photo's,
# unlike noise), two classes, N training and N/8 validation images per size
"$PY" - "$WORK" "$N" <<'EOF'
import os, random, sys
from PIL import Image
work, n = sys.argv[1], int(sys.argv[2])
for px in (150, 224):
    root = f"{work}/jpeg{px}-{n}"
    if os.path.exists(f"{root}/done"):
        continue
    rng = random.Random(px)
    for split, count in (("train", n), ("validation", n // 8)):
        for c in ("a", "b"):
            os.makedirs(f"{root}/{split}/{c}", exist_ok=True)
            for i in range(count // 2):
                small = Image.frombytes("RGB", (8, 8), bytes(rng.randrange(256) for _ in range(192)))
                small.resize((px, px), Image.BICUBIC).save(f"{root}/{split}/{c}/{i:05d}.jpg", quality=90)
    open(f"{root}/done", "w").close()
EOF

# ---- 4. CUDA from pipe's own point of view (the LibTorch it linked)
command -v nvidia-smi >/dev/null || no_cuda "nvidia-smi not found: no NVIDIA driver on this machine"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) || no_cuda "nvidia-smi sees no GPU"
[ -n "$gpu" ] || no_cuda "nvidia-smi sees no GPU"

# ---- 5. Runs. graph PX KIND BF16: KIND extract (decode -> base -> cache -> head, 1 epoch) or
# augment (regime B: decode -> augment -> base -> head, 3 epochs). The head is small (hidden
# 16) so that its CPU step does not bound regime B: the question is whether decode keeps up.
graph() {
  local px=$1 kind=$2 bf16=$3 extra="memo: {stage: cache}" edges="decode -> features -> memo -> head" epochs=1
  if [ "$kind" = augment ]; then
    extra="augment: {stage: augment, rotation: 40, width_shift: 0.2, height_shift: 0.2, shear: 0.2, zoom: 0.2, horizontal_flip: true, fill: nearest}"
    edges="decode -> augment -> features -> head"
    epochs=3
  fi
  cat <<EOF
data: {source: folder, path: $WORK/jpeg$px-$N, splits: [train, validation]}
nodes:
  decode: {stage: decode, size: [$px, $px]}
  $extra
  features: {stage: convbase, model: "builtin:vgg16", device: cuda, optimize: off, bf16: $bf16}
  head: {stage: dense_head, hidden: 16, dropout: 0}
edges: [$edges]
train: {epochs: $epochs, batch: 64, seed: 1}
EOF
}

# run NAME PX KIND BF16: pipe run on a fresh cache while nvidia-smi samples every 0.2 s; sets
# R (the run dir), BUSY (mean GPU utilization, %) and MEM (peak memory used, MiB).
run() {
  local name=$1 dir=$WORK/runs/$1 smi rc=0
  rm -rf "$dir" "$WORK/cache-$name" && mkdir -p "$dir"
  graph "$2" "$3" "$4" >"$dir.yaml"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 >"$dir.smi" &
  smi=$!
  PIPE_CACHE_DIR=$WORK/cache-$name "$PIPE" run "$dir.yaml" --out "$dir" --force --quiet --no-progress \
    --threads "$(nproc)" >"$dir.log" 2>&1 || rc=$?
  kill "$smi"
  if [ "$rc" != 0 ]; then
    grep -q "CUDA is not available" "$dir.log" && no_cuda "$(grep -m1 CUDA "$dir.log")"
    cat "$dir.log" >&2
    say "pipe run $name failed"
    exit 1
  fi
  R=$dir
  read -r BUSY MEM < <(awk -F', *' '{s += $1; n++; if ($2 > m) m = $2} END {printf "%.0f %d\n", s / n, m}' "$dir.smi")
}
# json FILE EXPR: EXPR over j, the file's JSON documents (one per line in a .jsonl file).
json() {
  "$PY" -c "import json, sys; f = sys.argv[1]
j = [json.loads(l) for l in open(f)] if f.endswith('.jsonl') else [json.load(open(f))]
print(eval(sys.argv[2]))" "$@"
}

declare -A cell
for px in 150 224; do
  for p in false true; do  # the first run is also the probe: it stops here when pipe sees no CUDA
    run "extract$px-$p" $px extract $p
    cell[x$px$p]=$(json "$R/summary.json" "round(j[0]['cache']['misses'] / j[0]['extraction_seconds'])")
    cell[m$px$p]=$MEM
  done
  run "augment$px" $px augment true
  cell[b$px]=$(json "$R/metrics.jsonl" "round(max(e['images_per_s'] for e in j[1:]))")
  cell[u$px]=$BUSY
  cell[m$px]=$MEM
done

echo
echo "GPU: $gpu; CPU: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //');" \
  "torch $("$PY" -c 'import torch; print(torch.__version__)'); $N training JPEGs per size"
echo
echo "| builtin:vgg16 (random weights), batch 256 | 150 px | 224 px |"
echo "|---|---|---|"
echo "| extraction, eager fp32 (optimize: off), img/s | ${cell[x150false]} | ${cell[x224false]} |"
echo "| extraction, bf16 autocast (the CUDA fast path), img/s | ${cell[x150true]} | ${cell[x224true]} |"
echo "| regime B epoch, decode + augment on $(nproc) cores, bf16, img/s (best of epochs 2-3) | ${cell[b150]} | ${cell[b224]} |"
echo "| GPU busy during the regime-B run (utilization.gpu, mean of 0.2 s samples), % | ${cell[u150]} | ${cell[u224]} |"
echo "| peak GPU memory used, fp32 / bf16 / regime B, MiB | ${cell[m150false]} / ${cell[m150true]} / ${cell[m150]} | ${cell[m224false]} / ${cell[m224true]} / ${cell[m224]} |"
