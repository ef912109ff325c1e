#!/usr/bin/env bash
# Runs every benchmark in one go on this machine (after `bash scripts/test.sh` has built them)
# and prints the results; README.md quotes one such run. Takes about 15 minutes on 2 cores.
#   bash bench/run_all.sh [OUT_DIR]     (checkpoints are written to OUT_DIR, default /tmp/fluxpipe-bench)
# With FLUXPIPE_BENCH_FULL=1 it also writes a full-size random-weight model (Q4_0 transformer, Q8_0
# T5: about 12 GB on disk, 3 minutes) and measures a 512² image within an 8 GiB memory budget
# (about 3 minutes more): the memory target of the text-to-image issue.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/fluxpipe-bench}"
mkdir -p "$out"
export FLUXPIPE_THREADS="${FLUXPIPE_THREADS:-2}"
echo "== machine"; lscpu | grep -E "Model name|^CPU\(s\)" ; date -u
echo "== load: 1,000 pollers"; ./build/bench/load_bench --pollers 1000 --seconds 10
echo "== several nodes: SQLite vs PostgreSQL, takeover"
eval "$(FLUXPIPE_PG_FSYNC=on bash scripts/pg_test_server.sh start)"
./build/bench/cluster_bench --seconds 10 2>&1 | grep -v " info \| warn "
bash scripts/pg_test_server.sh stop "$FLUXPIPE_TEST_PG_DIR"
echo "== engine core: GEMM and attention"; ./build/bench/core_bench
for dtype in bf16 q8_0 q4_0; do
  weights=$(./build/bench/flux_bench write --out "$out" --blocks 1,1 --dtype "$dtype")
  echo "== FLUX.1 step, $dtype weights"; ./build/bench/flux_bench step --weights "$weights" --sizes 256,512,1024 --reps 2
  rm -f "$weights"
done
echo "== autoencoder decode"; ./build/bench/flux_bench vae --sizes 256,512,1024 --reps 2
echo "== the decoder's convolutions, direct against Winograd"; ./build/bench/core_bench --conv 256 --reps 3
for dtype in bf16 q8_0; do
  echo "== T5-XXL encoding, $dtype"; ./build/bench/flux_bench t5 --blocks 2,0 --dtype "$dtype" --reps 2
done
# The AVX2 path, forced (FLUXPIPE_ISA), against PyTorch held to AVX2 (F32: its oneDNN has no bf16 there):
# bf16 weights, and Q8_0 / Q4_0 with the integer products (FLUXPIPE_INT8=avx2: the plain-AVX2 kernel
# that CPUs without AVX-VNNI run; FLUXPIPE_INT8=0: the widening path the integers replace).
echo "== instruction sets and kernels"; ./build/fluxpipe devices; FLUXPIPE_ISA=avx2 ./build/fluxpipe devices
echo "== engine core at AVX2, M = 512"; FLUXPIPE_ISA=avx2 ./build/bench/core_bench --m 512 --quick
for dtype in bf16 q8_0 q4_0; do
  weights=$(./build/bench/flux_bench write --out "$out" --blocks 1,1 --dtype "$dtype")
  echo "== FLUX.1 step, $dtype weights, FLUXPIPE_ISA=avx2"
  FLUXPIPE_ISA=avx2 ./build/bench/flux_bench step --weights "$weights" --sizes 256,512 --reps 2
  if [ "$dtype" = q4_0 ]; then
    echo "== the same, plain-AVX2 integer kernel (FLUXPIPE_INT8=avx2)"
    FLUXPIPE_INT8=avx2 FLUXPIPE_ISA=avx2 ./build/bench/flux_bench step --weights "$weights" --sizes 256,512 --reps 2
  fi
  if [ "$dtype" = q8_0 ]; then
    echo "== the same, integer products off (FLUXPIPE_INT8=0)"
    FLUXPIPE_INT8=0 FLUXPIPE_ISA=avx2 ./build/bench/flux_bench step --weights "$weights" --sizes 256,512 --reps 2
  fi
  rm -f "$weights"
done
echo "== autoencoder decode, FLUXPIPE_ISA=avx2"; FLUXPIPE_ISA=avx2 ./build/bench/flux_bench vae --sizes 256 --reps 2
echo "== the same, Winograd off (FLUXPIPE_WINOGRAD=0)"; FLUXPIPE_WINOGRAD=0 FLUXPIPE_ISA=avx2 ./build/bench/flux_bench vae --sizes 256 --reps 2
echo "== the decoder's convolutions at AVX2"; FLUXPIPE_ISA=avx2 ./build/bench/core_bench --conv 256 --reps 2
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "== peer: eager PyTorch bf16 (Debian python3-torch)"; /usr/bin/python3 bench/peer_pytorch.py --threads "$FLUXPIPE_THREADS" --sizes 256,512,1024
  echo "== peer: eager PyTorch f32 held to AVX2"
  ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 /usr/bin/python3 bench/peer_pytorch.py --threads "$FLUXPIPE_THREADS" \
    --sizes 256,512 --dtype f32
else
  echo "== peer: PyTorch not installed (apt-get install python3-torch to measure it)"
fi
if [ "${FLUXPIPE_BENCH_FULL:-0}" = 1 ]; then
  echo "== full-size model, 512², 4 steps, --memory-budget 8G"
  ./build/fluxpipe make-test-model "$out/full" --layout gguf --width real --blocks 19,38 --text-layers 24 \
    --quant q4_0 --text-quant q8_0
  ./build/fluxpipe generate "a lighthouse on a cliff at dusk" -o "$out/full.png" --model "$out/full" \
    --width 512 --height 512 --steps 4 --seed 1 --memory-budget 8G
  rm -rf "$out/full" "$out/full.png"
fi
