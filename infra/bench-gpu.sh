#!/bin/sh
# The GPU worker benchmark in one go on a bare GPU machine with no network (issue 14).
#
# Prepared here with `make bench-gpu-prepare` (the wheels that machine lacks into
# .gpubench/wheels/, a 10 s 1080p30 clip into .gpubench/); there, from the repository root
# with .gpubench/ beside it:   sh infra/bench-gpu.sh
# It installs the wheels into /tmp/bodycam-site (never into the machine's own Python), runs
# `python -m bodycam.bench_gpu --device cuda` on the clip, and writes gpu-bench.json,
# gpu-bench.log and BENCHMARKS.md (this repository's, with the GPU section replaced) into
# $OUT (default: the current folder). End to end it runs the clip as work units (up to
# BENCH_GPU_SECONDS of video, starting none after BENCH_GPU_BUDGET_S) 1 and 4 at a time in one
# process, then in 4, 8 and 16 worker processes sharing the GPU (BENCH_GPU_CHUNKS and
# BENCH_GPU_PROCESSES change the lists; an empty one skips its runs; BENCH_GPU_DECODE=cuda
# decodes with NVDEC instead of the host CPU, exact but slower here). Stops itself after
# BENCH_GPU_LIMIT_S (default 420 s) so that everything, install included, ends inside 8
# minutes; the JSON is saved after every step.
# Bring the report back and write it here with:
#   python -m bodycam.bench_gpu --from-report gpu-bench.json --benchmarks
set -eu
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD}"
PY="${PYTHON:-python3}"
CLIP="${BENCH_GPU_CLIP:-.gpubench/bodycam-1080p30-10s.mp4}"
SITE=/tmp/bodycam-site
# BENCH_GPU_WHEELS=0 skips the install (a machine that has the packages; the wheels are cp312).
if [ "${BENCH_GPU_WHEELS:-1}" != 0 ] && ls .gpubench/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .gpubench/wheels/*.whl
    export PYTHONPATH="$SITE:$PWD"
else
    export PYTHONPATH="$PWD"
fi
[ -f "$OUT/BENCHMARKS.md" ] || cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L || true
export PYTHONUNBUFFERED=1
set +e
# shellcheck disable=SC2086  # BENCH_GPU_ARGS is a list of options
timeout "${BENCH_GPU_LIMIT_S:-420}" "$PY" -m bodycam.bench_gpu --device "${BENCH_GPU_DEVICE:-cuda}" \
    --video "$CLIP" --seconds "${BENCH_GPU_SECONDS:-1800}" --chunks "${BENCH_GPU_CHUNKS-1,4}" \
    --processes "${BENCH_GPU_PROCESSES-4,8,16}" --min-stage-s "${BENCH_GPU_MIN_STAGE_S:-3}" \
    --decode-device "${BENCH_GPU_DECODE:-cpu}" \
    --budget-s "${BENCH_GPU_BUDGET_S:-45}" \
    --out "$OUT/gpu-bench.json" --benchmarks "$OUT/BENCHMARKS.md" ${BENCH_GPU_ARGS:-} \
    >"$OUT/gpu-bench.log" 2>&1
rc=$?
cat "$OUT/gpu-bench.log"
[ "$rc" = 124 ] && echo "bench-gpu: stopped at ${BENCH_GPU_LIMIT_S:-420} s; $OUT/gpu-bench.json holds what was measured"
exit "$rc"
