#!/usr/bin/env bash
# Builds fluxpipe and runs every test: the fuzz targets briefly, then the CTest suite
# (whose summary is the last thing printed) with a PostgreSQL server of its own.
# Installs its Debian packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --test

# The CUDA backend is built when the toolkit is at /usr/local/cuda (CI machines have it, and no
# GPU: the GPU tests then report SKIPPED with the reason).
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2

# libFuzzer, briefly: a crash here fails the run.
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DFLUXPIPE_FUZZ=ON -DFLUXPIPE_TESTS=OFF -DFLUXPIPE_CUDA=off >/dev/null
cmake --build build-fuzz -j2 --target request_fuzz weights_fuzz http_fuzz
for target in request weights http; do
  mkdir -p "build-fuzz/corpus/$target"
  echo "fuzzing $target for ${FUZZ_SECONDS:-20} s"
  ./build-fuzz/fuzz/${target}_fuzz -max_total_time="${FUZZ_SECONDS:-20}" -rss_limit_mb=4096 -print_final_stats=1 \
    "build-fuzz/corpus/$target" "fuzz/corpus/$target" 2>&1 | tail -n 3
done

# s3rver and playwright-core (npm registry, pinned by the committed lock file) for the S3
# image-store tests and the playground's browser test (which drives Debian's chromium).
if ! command -v npm >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
mkdir -p build/npm
cp tests/support/npm/package.json tests/support/npm/package-lock.json build/npm/
(cd build/npm && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
export FLUXPIPE_TEST_S3RVER="$PWD/build/npm/node_modules/s3rver/bin/s3rver.js"
export FLUXPIPE_TEST_NODE_MODULES="$PWD/build/npm/node_modules"

# PostgreSQL for the shared-store tests (the store suite, the multi-node processes): a
# throw-away server on a Unix socket in a temporary folder, stopped whatever happens.
eval "$(bash scripts/pg_test_server.sh start)"
trap 'bash scripts/pg_test_server.sh stop "$FLUXPIPE_TEST_PG_DIR"' EXIT

ctest --test-dir build --output-on-failure -j2
