#!/usr/bin/env bash
# One device call that does a GPU session's measuring: install the carried competitor wheels, then
# run jobs in lanes (one lane per set of GPUs, lanes in parallel, a lane's jobs one after another),
# all within MINUTES, and pack the runs and logs into $OUT/session.tar.gz for the committed results/.
#
#   bash scripts/gpu_session.sh MINUTES JOB [JOB ...]
#
#   JOB   = [GPUS/]WHAT        GPUS: comma-separated GPU indices (default 0); a suite run in a
#                              lane of several GPUs uses one worker per GPU
#   WHAT  = check              the fused GMA kernels against the float64 SPEC at real sizes, every
#                              dtype, then the edge shapes (K=256 with D=128, K=1 with D=16,
#                              Dv=32), plus the copy/matmul ceilings (scripts/gpu_kernels.py;
#                              results in logs/check/gpu_kernels.json)
#         | tune               host cost per call, and a sweep of the launch-plan knobs (block,
#                              warps, stages, waves, min_bps) per variant: the best become
#                              results/gpu/triton-plan.json, which every later job and call of
#                              the session uses (GMA_TRITON_PLAN)
#         | overhead           host cost per call only (the first section of tune), no sweep
#         | hostparts          host time of a training call at N=2048 split into its parts: its
#                              forward, its backward's launches, the autograd engine around a
#                              Function that launches nothing, cuDNN SDPA's call
#         | bwdsweep           fwd_bwd at N=131072: split vs fp16 output pass, then training plans
#                              (block, block_bwd, warps, stages: scripts/gpu_kernels.py BWD_PLANS)
#         | regsweep           inference forward at N=131072 under register caps (plan key
#                              regs_fwd) x block x warps x waves, and training with capped
#                              forward kernels; registers and spills of each compiled kernel
#         | smallprofile       device time per kernel of each variant at N=2048 and 4096
#         | smallplans         device and wall time per call at N=2048-8192 under fewest blocks
#                              per segment 4 (the table), 2 and 1
#         | segsweep           device and wall time with 16 against 33 segments per head at
#                              N=8192-131072
#         | devtimes[@SRC]     device, wall and replayed (CUDA graph) time per call of every
#                              variant at N=2048, 4096 and 131072 with the table's plans; @SRC:
#                              of the gmabench source
#                              tree under SRC (an untracked copy, e.g. the last commit's, so that
#                              two versions of the kernels are timed side by side in one call)
#         | plansweep[@K[xD]]:NS:MODES:PLANS  device time (per kernel too) at the comma-separated
#                              NS and MODES (fwd, fwd_bwd) under each plan of the JSON list PLANS
#                              (TUNING knobs; {} is the table's), at K components (default 64)
#                              and head size D = Dv (default 64; e.g. plansweep@64x128)
#         | stagesweep         device time (per kernel too) of every variant at N=2048 and 131072
#                              with the block loops pipelined 2 (the table), 3 and 4 stages deep
#         | wide               training at D=64, K=256 and D=128, K=128 (N=16384): fused
#                              kernels against gma_chunked, and whether the kernels ran
#         | profile            device time per kernel of each variant at N=131072 (torch
#                              profiler), then Nsight Compute on one call of each variant: speed
#                              of light, occupancy, launch statistics, warp stall reasons
#                              (logs/profile/ncu.txt)
#         | srcprofile[:N[:KERNELS]]  Nsight Compute's sampled warp stalls per SASS instruction
#                              of a training call's kernels at N (131072; KERNELS:
#                              comma-separated name prefixes, default _causal_bwd_q,_causal_bwd_k;
#                              the bidirectional call's when every prefix names "bidir"),
#                              summed by scripts/ncu_source.py (logs/srcprofile/*.txt)
#         | pytest[:EXPR]      the GPU-marked tests (competitors against their references, kernels),
#                              at most 7 minutes; EXPR selects with pytest -k; with
#                              GPU_PYTEST_PROCS=P, one process per test, P at a time (their
#                              kernels compile in parallel), one JUnit XML each, each test on
#                              one GPU of its lane in turn (a test marked gpus2 on all of
#                              them; scripts/gpu_pytest_ids.py), the longest first by
#                              GPU_PYTEST_DURATIONS (an earlier run's JUnit XML; default the
#                              newest results/*-gpu-tests*/pytest-gpu.xml), e.g. on two GPUs
#                              `GPU_PYTEST_PROCS=12 bash scripts/gpu_session.sh 8 0,1/pytest`
#         | SUITE[@NAME][:EXTRA]  gmabench run SUITE EXTRA into results/gpu/NAME (NAME = SUITE, plus
#                              "-control" when EXTRA is given, unless @NAME names it), resumed
#                              when that folder exists
#
#   e.g. on four GPUs, everything at once:
#   bash scripts/gpu_session.sh 9 0/check 0/oom-isolation "0/oom-isolation:--mixers gma-reference,sdpa-flash" \
#        0/pytest 1/kernels 2,3/paper
#
# A sweep larger than one call is finished over several: `tar xzf session.tar.gz results/gpu` in
# the checkout (results/gpu/ is untracked, so it travels) and call again: runs resume. No report is written
# here (plotly is not on the GPU image): `gmabench report results/gpu/NAME` on any machine.
# GMABENCH_GIT_COMMIT, when set, is recorded as the code version (the GPU host gets no .git).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder that comes back}"
minutes="${1:?minutes}"; shift
(($#)) || { echo "usage: gpu_session.sh MINUTES JOB..." >&2; exit 2; }
# A device command may run 10 minutes; one stopped at that limit returns only $OUT's files, and
# the archive of results/gpu is made last: leave room for the grace period and the packing.
max_minutes="${GPU_SESSION_MAX_MINUTES:-8}"
((minutes <= max_minutes)) || {
    echo "gpu_session.sh: $minutes minutes is over the $max_minutes a device command leaves room for" \
         "(GPU_SESSION_MAX_MINUTES overrides)" >&2; exit 2; }
export PYTHONUNBUFFERED=1
# fla's and mamba_ssm's autotuned configs kept on disk: a resumed run's fresh worker reuses them
export TRITON_CACHE_AUTOTUNING=1
# launch plans tuned earlier in this session (job tune)
[[ -s results/gpu/triton-plan.json ]] && export GMA_TRITON_PLAN="$PWD/results/gpu/triton-plan.json"
deadline=$(( $(date +%s) + minutes * 60 ))
logs="$OUT/logs"
mkdir -p "$logs" results/gpu

if [[ -d .whl ]]; then   # not in a pipeline: its PYTHONPATH must reach this shell
    source scripts/gpu_env.sh >"$logs/gpu_env.log" 2>&1 || echo "gpu_env: some wheels did not install"
    cat "$logs/gpu_env.log"
fi
nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv \
    | tee "$logs/gpu.txt"
COLUMNS=200 python3 -m gmabench mixers 2>&1 | tee "$logs/mixers.txt"   # which competitors run here

left() { echo $(( deadline - $(date +%s) )); }

run_job() {  # run_job GPUS WHAT  (CUDA_VISIBLE_DEVICES already set by the lane)
    local gpus="$1" what="$2" s suite extra name
    s=$(left)
    (( s > 30 )) || { echo "== $what: no time left"; return; }
    echo "== $what on GPU $gpus, $s s left, $(date -u +%T)"
    case "$what" in
        check)
            python3 scripts/gpu_kernels.py --out "$logs/check" --sections ceil,check,extra \
                --budget "$(( s > 260 ? 240 : s - 20 ))" 2>&1 | tail -60 ;;
        tune)
            python3 scripts/gpu_kernels.py --out "$logs/tune" --sections overhead,sweep \
                --budget "$(( s > 390 ? 360 : s - 30 ))" 2>&1 | tail -80
            if [[ -s "$logs/tune/triton-plan.json" ]]; then
                cp "$logs/tune/triton-plan.json" results/gpu/triton-plan.json
                export GMA_TRITON_PLAN="$PWD/results/gpu/triton-plan.json"
            fi ;;
        overhead)
            python3 scripts/gpu_kernels.py --out "$logs/overhead" --sections overhead \
                --budget "$(( s > 200 ? 180 : s - 20 ))" 2>&1 | tail -80 ;;
        bwdsweep)
            python3 scripts/gpu_kernels.py --out "$logs/bwdsweep" --sections bwdsweep \
                --budget "$(( s > 420 ? 400 : s - 20 ))" 2>&1 | grep -v "^time " | tail -40 ;;
        regsweep|smallprofile|smallplans|segsweep|wide|hostparts)
            python3 scripts/gpu_kernels.py --out "$logs/$what" --sections "$what" \
                --budget "$(( s > 420 ? 400 : s - 20 ))" 2>&1 | grep -v "^time " | tail -50 ;;
        plansweep:*|plansweep@*)   # e.g. 'plansweep:131072:fwd:[{},{"warps_fwd":8}]', 'plansweep@128:...'
            local kk=64 dd=64 rest ns modes
            if [[ "$what" == plansweep@* ]]; then
                rest="${what#plansweep@}"; kk="${rest%%:*}"
                if [[ "$kk" == *x* ]]; then dd="${kk#*x}"; kk="${kk%%x*}"; fi
            fi
            rest="${what#*:}"
            ns="${rest%%:*}"; rest="${rest#*:}"; modes="${rest%%:*}"; rest="${rest#*:}"
            local tagdir="plansweep-k$kk" i=2; [[ "$dd" == 64 ]] || tagdir+="-d$dd"
            tagdir+="-${modes//,/-}"
            while [[ -e "$logs/$tagdir" ]]; do tagdir="${tagdir%-run*}-run$i"; ((i++)); done
            python3 scripts/gpu_kernels.py --out "$logs/$tagdir" --sections plansweep --ns "$ns" \
                --modes "$modes" --plans "$rest" --k "$kk" --d "$dd" \
                --budget "$(( s > 420 ? 400 : s - 20 ))" 2>&1 | grep -v "^time " | tail -50 ;;
        stagesweep)
            python3 scripts/gpu_kernels.py --out "$logs/$what" --sections "$what" --ns 2048,131072 \
                --budget "$(( s > 420 ? 400 : s - 20 ))" 2>&1 | grep -v "^time " | tail -50 ;;
        devtimes|devtimes@*)
            local src=""; [[ "$what" == devtimes@* ]] && src="${what#devtimes@}"
            GMABENCH_SRC="$src" python3 scripts/gpu_kernels.py --out "$logs/devtimes${src:+-${src//\//_}}" \
                --sections devtimes --ns 2048,4096,131072 \
                --budget "$(( s > 420 ? 400 : s - 20 ))" 2>&1 | grep -v "^time " | tail -30 ;;
        profile)
            python3 scripts/gpu_kernels.py --out "$logs/profile" --sections profile \
                --budget "$(( s > 200 ? 180 : s - 20 ))" 2>&1 | tail -60
            local ncu_bin
            ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
            if [[ -n "$ncu_bin" ]] && (( $(left) > 90 )); then
                timeout "$(( $(left) - 60 ))" "$ncu_bin" --clock-control none --target-processes all \
                    -k 'regex:^_(state|bidir|causal|param)' --section SpeedOfLight --section Occupancy \
                    --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis \
                    --section MemoryWorkloadAnalysis \
                    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
                    python3 scripts/gpu_kernels.py --out "$logs/profile/ncu" --sections ncu \
                    >"$logs/profile/ncu.txt" 2>&1
                echo "ncu exit $?"; grep -E "^  _|Duration|Achieved Occupancy|Registers Per|Theoretical Occ|Compute \(SM\) Thr|Memory Thr" \
                    "$logs/profile/ncu.txt" | head -120
            else
                echo "ncu: not found or no time left"
            fi ;;
        srcprofile|srcprofile:*)
            local rest="${what#srcprofile}" n=131072 kernels="_causal_bwd_q,_causal_bwd_k" ncu_bin kern d
            rest="${rest#:}"; [[ -n "$rest" ]] && n="${rest%%:*}"
            [[ "$rest" == *:* ]] && kernels="${rest#*:}"
            local variant=()
            [[ -z "$(tr , '\n' <<<"$kernels" | grep -v bidir)" ]] && variant=(--bidir)
            ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
            d="$logs/srcprofile"; mkdir -p "$d"
            [[ -n "$ncu_bin" ]] || { echo "ncu: not found"; return; }
            "$ncu_bin" --version | tail -n 1
            for kern in ${kernels//,/ }; do
                (( $(left) > 60 )) || { echo "no time left for $kern"; break; }
                timeout "$(( $(left) - 30 ))" "$ncu_bin" --clock-control none --profile-from-start off \
                    -k "regex:^$kern" --launch-count 1 --import-source yes -f -o "$d/$kern" \
                    --section SourceCounters --section WarpStateStats --section SchedulerStats \
                    --section LaunchStats --section Occupancy --section SpeedOfLight --section MemoryWorkloadAnalysis \
                    python3 scripts/ncu_source.py call --n "$n" "${variant[@]}" >"$d/$kern.log" 2>&1
                echo "ncu $kern exit $?"; tail -n 3 "$d/$kern.log"
                "$ncu_bin" -i "$d/$kern.ncu-rep" --page details >"$d/$kern-details.txt" 2>&1
                "$ncu_bin" -i "$d/$kern.ncu-rep" --page source --csv --print-source sass \
                    >"$d/$kern-sass.csv" 2>"$d/$kern-sass.err" || head -n 5 "$d/$kern-sass.err"
                python3 scripts/ncu_source.py summarize "$d/$kern-sass.csv" >"$d/$kern-sass.txt" 2>&1
                head -n 45 "$d/$kern-sass.txt"
                gzip -9 "$d/$kern-sass.csv"
                grep -E "Duration|Registers Per|Achieved Occ|Theoretical Occ|Issued Warp|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued" \
                    "$d/$kern-details.txt" | head -20
                rm -f "$d/$kern.ncu-rep"
            done ;;
        pytest|pytest:*)    # at most 7 minutes; "pytest:EXPR" selects tests with -k EXPR
            local select=(); [[ "$what" == pytest:* ]] && select=(-k "${what#pytest:}")
            local popts=(-p no:cacheprovider -o addopts="" -o junit_family=xunit1 -rfEs)
            if (( ${GPU_PYTEST_PROCS:-1} > 1 )); then
                # one process per test, GPU_PYTEST_PROCS at once: the kernels' compilation is
                # what takes the time, and it is CPU work (16 cores a GPU); each test sees one GPU
                # of the lane, in turn, or all of them if marked gpus2 (scripts/gpu_pytest_ids.py,
                # lines "GPUS NODEID"); one JUnit XML and log per test, and a line "status :: id"
                # longest first, by GPU_PYTEST_DURATIONS (JUnit XML; default: the newest committed
                # run of every GPU test)
                mkdir -p "$logs/pytest-gpu"
                local junit="${GPU_PYTEST_DURATIONS:-$(ls results/*-gpu-tests*/pytest-gpu.xml 2>/dev/null | tail -n 1)}"
                python3 scripts/gpu_pytest_ids.py --gpus "$gpus" "${select[@]}" \
                    ${junit:+--durations "$junit"} >"$logs/pytest-gpu/ids.txt"
                echo "$(wc -l <"$logs/pytest-gpu/ids.txt") tests on GPU $gpus, $GPU_PYTEST_PROCS at a time"
                timeout -s INT "$(( s > 430 ? 420 : s - 10 ))" xargs -P "$GPU_PYTEST_PROCS" -d '\n' -I{} \
                    sh -c 'dev="${1%% *}"; id="${1#* }"; n=$(printf %s "$id" | md5sum | cut -c1-10)
                        shift; CUDA_VISIBLE_DEVICES="$dev" python3 -m pytest -q "$@" "$id" \
                        --junitxml="$0/$n.xml" >"$0/$n.log" 2>&1
                        echo "$(tail -n 1 "$0/$n.log" | sed "s/ in [0-9.]*s.*//") :: $id"' \
                    "$logs/pytest-gpu" {} "${popts[@]}" <"$logs/pytest-gpu/ids.txt" \
                    | tee "$logs/pytest-gpu/outcomes.txt" | cut -d: -f1 | sort | uniq -c
                grep -v " passed\| skipped" "$logs/pytest-gpu/outcomes.txt" | head -20
            else
                timeout -s INT "$(( s > 430 ? 420 : s - 10 ))" python3 -m pytest -m gpu "${select[@]}" -q \
                    --ignore=tests/report "${popts[@]}" --junitxml="$logs/pytest-gpu.xml" 2>&1 | tail -60
            fi ;;
        *)
            suite="${what%%:*}"; extra=""; name="$suite"
            if [[ "$what" == *:* ]]; then extra="${what#*:}"; name="$suite-control"; fi
            if [[ "$suite" == *@* ]]; then name="${suite#*@}"; suite="${suite%%@*}"; fi
            local resume=(); [[ -s "results/gpu/$name/results.jsonl" ]] && resume=(--resume)
            # shellcheck disable=SC2086
            python3 -m gmabench run "$suite" $extra --out "results/gpu/$name" "${resume[@]}" --no-report \
                --time-budget "$(python3 -c "print(max($s - 25, 10) / 60)")" 2>&1 | grep -v "^ *ok " | tail -30 ;;
    esac
    echo "== $what done, $(date -u +%T)"
}

declare -A lanes=()
order=()
for job in "$@"; do
    gpus=0; what="$job"
    if [[ "${job%%:*}" == */* ]]; then gpus="${job%%/*}"; what="${job#*/}"; fi
    [[ -v "lanes[$gpus]" ]] || order+=("$gpus")
    lanes[$gpus]+="$what"$'\n'
done

pids=()
for gpus in "${order[@]}"; do
    (
        export CUDA_VISIBLE_DEVICES="$gpus"
        while IFS= read -r what; do
            [[ -n "$what" ]] && run_job "$gpus" "$what"
        done <<<"${lanes[$gpus]}"
    ) >"$logs/lane-${gpus//,/_}.log" 2>&1 &
    pids+=($!)
done
# The time budget stops new cells, not a running one: at the deadline plus a grace period, stop
# what still runs (every record already written is on disk) so the archive is still made.
(
    sleep "$(( $(left) + 40 ))"
    pkill -INT -f "gmabench run|pytest -m gpu|gpu_kernels.py|ncu" && sleep 8
    pkill -KILL -f "gmabench run|pytest -m gpu|gpu_kernels.py|multiprocessing.spawn"
) >/dev/null 2>&1 &
watchdog=$!
wait "${pids[@]}"
kill "$watchdog" 2>/dev/null

for gpus in "${order[@]}"; do
    echo "######## lane GPU $gpus"; tail -n 40 "$logs/lane-${gpus//,/_}.log"
done
# results/gpu/... and logs/...: `tar xzf session.tar.gz results/gpu` in the checkout restores the runs.
tar czf "$OUT/session.tar.gz" results/gpu -C "$OUT" logs
cp "$logs/mixers.txt" "$logs/gpu.txt" "$OUT/" 2>/dev/null
rm -rf "$logs"      # at most 8 files come back: the archive holds them
ls -la "$OUT"
