#!/usr/bin/env bash
# One device call that does a GPU session's measuring: install the carried competitor wheels,
# check the fused GMA kernels at real sizes, run suites (resumable, within a time budget) and pack
# every run directory into $OUT/runs.tar.gz for the committed results/.
#
#   bash scripts/gpu_session.sh MINUTES SUITE[:EXTRA-ARGS] ...
#   e.g. bash scripts/gpu_session.sh 7 paper "oom-isolation" "oom-isolation:--mixers gma-reference,sdpa-flash"
#
# GMABENCH_KERNEL_CHECK=0 skips the kernel check (later calls of one lease).
# Runs go to results/gpu/<name>/ (name = suite, plus "-control" when extra arguments are given) and
# continue with --resume when that folder came along, so a sweep larger than one call's limit is
# finished over several calls: unpack runs.tar.gz into the repo between calls. MINUTES is shared
# by all suites. No report is written there (plotly is not on the GPU image): run
# `gmabench report results/gpu/<name>` afterwards on any machine.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder that comes back}"
minutes="${1:?minutes}"; shift
export PYTHONUNBUFFERED=1
start=$(date +%s)

[[ -d .whl ]] && { source scripts/gpu_env.sh || echo "gpu_env: some wheels did not install"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
COLUMNS=200 python3 -m gmabench mixers 2>&1 | tee "$OUT/mixers.txt"   # which competitors run here
if [[ "${GMABENCH_KERNEL_CHECK:-1}" == 1 ]]; then
    python3 scripts/gpu_kernels.py --out "$OUT" --sections check --budget 120 2>&1 | tail -40 | tee "$OUT/kernels.log"
fi

mkdir -p results/gpu
for spec in "$@"; do
    suite="${spec%%:*}"; extra=""; name="$suite"
    if [[ "$spec" == *:* ]]; then extra="${spec#*:}"; name="$suite-control"; fi
    left=$(( minutes * 60 - ($(date +%s) - start) ))
    (( left > 30 )) || { echo "no time left for $name"; break; }
    resume=(); [[ -s "results/gpu/$name/results.jsonl" ]] && resume=(--resume)
    # shellcheck disable=SC2086
    python3 -m gmabench run "$suite" $extra --out "results/gpu/$name" "${resume[@]}" --no-report \
        --time-budget "$(python3 -c "print(max($left - 20, 10) / 60)")" 2>&1 | grep -v "^ *ok " | tail -25
done
tar czf "$OUT/runs.tar.gz" results/gpu
ls -la "$OUT"
