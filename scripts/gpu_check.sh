#!/usr/bin/env bash
# On the lent GPU machine (device tool: `bash scripts/gpu_check.sh [GTEST_FILTER | bench]`,
# carry [".device"]): prints what the machine has, puts the programs packed by
# scripts/gpu_pack.sh where the test binary expects them, and runs the GPU tests — every CUDA op
# against the CPU, the golden sets on the GPU, the GPU end-to-end checks — or, with `bench`, one
# real-width double + single block timed on the GPU beside PyTorch eager and compiled on the
# same card. Logs go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
filter=${1:-'CudaDevice.*:CudaOps.*:RunCommandCuda.*:EndToEnd.OnTheGpu*:EndToEnd.DeviceCuda*'}
root=$PWD
echo "== machine"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv
nvcc --version | tail -2
ls -l /usr/local/cuda/lib64/libcublasLt.so* 2>/dev/null | head -3
[ -d .device ] || { echo "no .device/: run scripts/gpu_pack.sh here first and carry .device"; exit 1; }

# The test binary names its programs and ../shared by the paths it was built with.
build=$(cat .device/build_dir); shared=$(cat .device/shared_dir)
src=$(dirname "$build")
if [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$root" "$src"; fi
mkdir -p /tmp/fp && tar -xJf .device/programs.tar.xz -C /tmp/fp
mkdir -p "$build/tests" "$build/bench"
cp /tmp/fp/bin/fluxpipe "$build/"
cp /tmp/fp/bin/fluxpipe_tests /tmp/fp/bin/fluxpipe-test-server "$build/tests/"
cp /tmp/fp/bin/flux_bench "$build/bench/"
mkdir -p "$shared" && tar -xJf .device/testdata.tar.xz -C "$shared"
export LD_LIBRARY_PATH=/tmp/fp/lib:/usr/local/cuda/lib64
# cuBLASLt comes from the machine (the bundle leaves NVIDIA's libraries out): the toolkit's, or
# the one PyTorch's wheels carry.
if ! LD_LIBRARY_PATH=$LD_LIBRARY_PATH ldconfig -p 2>/dev/null | grep -q libcublasLt.so.13 && [ ! -e /usr/local/cuda/lib64/libcublasLt.so.13 ]; then
  lt=$(find / -name 'libcublasLt.so.13*' -not -path '/proc/*' 2>/dev/null | head -1)
  [ -n "$lt" ] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$lt") && echo "cuBLASLt from $lt"
fi
missing=$(ldd "$build/fluxpipe" "$build/tests/fluxpipe_tests" | grep 'not found' | sort -u)
[ -z "$missing" ] || { echo "missing libraries:"; echo "$missing"; }

echo "== fluxpipe devices"
"$build/fluxpipe" devices
if [ "$filter" = bench ]; then
  echo "== bench: one real-width double + single block (bf16), fluxpipe then PyTorch on this GPU"
  cd /tmp && "$build/bench/flux_bench" write --out /tmp --blocks 1,1 --dtype bf16
  timeout 200 "$build/bench/flux_bench" step --device cuda --weights /tmp/flux-random-d1s1-bf16.safetensors --sizes 512,1024 --reps 5
  env -u LD_LIBRARY_PATH PYTHONUNBUFFERED=1 timeout 90 python3 "$root/bench/peer_pytorch.py" --device cuda --sizes 512,1024 --reps 5 --no-decode
  # Compiled at the target size only: max-autotune tries many product configurations per shape.
  env -u LD_LIBRARY_PATH PYTHONUNBUFFERED=1 timeout 300 python3 "$root/bench/peer_pytorch.py" --device cuda --sizes 1024 --reps 5 --no-decode \
    --compile max-autotune-no-cudagraphs
  echo "== done"
  exit 0
fi
echo "== tests: $filter (one process each: a CUDA fault ends only its own test)"
cd "$build/tests"
tests=$(./fluxpipe_tests --gtest_list_tests --gtest_filter="$filter" | awk '/^[^ ]/{suite=$1} /^  /{print suite $1}')
passed=0; failed=0; skipped=0
for t in $tests; do
  t0=$(date +%s%N)
  # SANITIZE=1: the op tests under compute-sanitizer's memcheck (out-of-bounds and misaligned accesses).
  pre=""; [ "${SANITIZE:-0}" = 1 ] && [ "${t#CudaOps.}" != "$t" ] && pre="compute-sanitizer --tool memcheck --error-exitcode 9"
  timeout 300 $pre ./fluxpipe_tests --gtest_filter="$t" > /tmp/one.log 2>&1; rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  if grep -q "^\[  SKIPPED \] 1 test" /tmp/one.log; then skipped=$((skipped+1)); what=SKIPPED
  elif [ $rc -eq 0 ]; then passed=$((passed+1)); what=PASSED
  else failed=$((failed+1)); what="FAILED (rc $rc)"; fi
  printf '%-90s %s %d ms\n' "$t" "$what" "$ms"
  # Failures whole (to the log); a passing test's printed measurements (PSNR lines) too.
  if [ "$what" != PASSED ] && [ "$what" != SKIPPED ]; then sed -n '/RUN/,$p' /tmp/one.log | head -80; fi
  grep -E "PSNR|dB" /tmp/one.log | head -8
done
echo "== done: $passed passed, $failed failed, $skipped skipped"
