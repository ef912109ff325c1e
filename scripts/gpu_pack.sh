#!/usr/bin/env bash
# Here, before a device run: packs what scripts/gpu_check.sh needs on the lent GPU machine into
# .device/ (ignored by git; name it in the device tool's `carry`). That machine has the CUDA
# toolkit and driver but none of Debian's -dev packages, so the programs are built here (with
# CUDA: the default build finds /usr/local/cuda) and travel with the libraries they load.
#   usage: bash scripts/gpu_pack.sh [BUILD_DIR]     (default build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
"$build/fluxpipe" --version | grep -q "cuda: built" ||
  { echo "gpu_pack: $build/fluxpipe has no CUDA backend (configure with -DFLUXPIPE_CUDA=on)" >&2; exit 1; }
rm -rf .device && mkdir -p .device
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
bash ../shared/tools/bundle-for-device.sh .device/programs.tar.xz "$build/fluxpipe" "$build/tests/fluxpipe_tests" \
  "$build/tests/fluxpipe-test-server" "$build/bench/flux_bench"
tar -cJf .device/testdata.tar.xz -C ../shared testdata
# Where the test binary was built to find its programs and the shared test data.
echo "$build" > .device/build_dir
realpath ../shared > .device/shared_dir
du -sh .device
