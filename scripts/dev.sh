#!/usr/bin/env bash
# pipe's one entry point for a fresh Debian 12 machine: installs what is missing, builds,
# then runs the main job or the test suite. Idempotent: re-running skips what is done.
#
#   bash scripts/dev.sh run  [pipe run options]   # build, then pipe run graphs/cached.yaml
#   bash scripts/dev.sh test [ctest options]      # build, then the whole test suite
#   bash scripts/dev.sh regimes-full              # build, then both regimes at their defaults vs the README (~2 min)
#   bash scripts/dev.sh build
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install_missing.sh

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev libtbb-dev libopencv-dev libyaml-cpp-dev libfmt-dev catch2 libcli11-dev
  libspdlog-dev zlib1g-dev libjpeg-dev libwebp-dev libopenblas0-openmp dataset-fashion-mnist
  libxxhash-dev graphviz
  # Headers of Gloo, the collectives library c10d runs on (LibTorch already links libgloo0).
  libgloo-dev
  nlohmann-json3-dev
)

build() {
  # Each LibTorch translation unit needs ~1.5 GB and a minute: two jobs at most.
  export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  export CCACHE_NOHASHDIR=1
  if [ ! -f build/build.ninja ]; then
    CXX=g++ cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
  fi
  cmake --build build -j 2
}

cmd="${1:-run}"
[ $# -gt 0 ] && shift
install_missing dev.sh "${PACKAGES[@]}"
build
case "$cmd" in
  run) exec ./build/pipe run graphs/cached.yaml "$@" ;;
  # regimes-full (both regimes at their defaults, minutes) is opt-in: its own command.
  test) cd build && exec ctest -j 2 --output-on-failure --timeout 900 -LE regimes-full "$@" ;;
  regimes-full) cd build && exec ctest --output-on-failure -L regimes-full "$@" ;;
  build) ;;
  *) echo "usage: bash scripts/dev.sh run|test|regimes-full|build" >&2; exit 2 ;;
esac
