# Install the optional competitors carried to the GPU machine, with no network and no pip index.
#
#     source scripts/gpu_env.sh            # from the repo root, in bash
#
# Installs whatever scripts/fetch_wheels.sh left in .whl/ and the call carried:
#   .whl/big/*.tar.xz    unpacked into the site folder (nvidia-cutlass-dsl-libs-cu13)
#   .whl/small/*.whl     installed into the same folder (pip --no-index --no-deps --target through
#                        a staging folder, since several wheels share nvidia_cutlass_dsl/; plain
#                        unzip when pip refuses)
# The site folder is .gpu-site/ in the repo (git-ignored; GMABENCH_SITE overrides), so it survives
# between device calls made while the machine stays warm. One marker per archive or wheel, in
# .gpu-site/.installed/, skips what an earlier call already installed: the two-call recipe (big
# archive first, small wheels second) and repeated sourcing both work.
#
# Then exports PYTHONPATH with the site folder and nvidia_cutlass_dsl/dsl_packages, which is what
# the nvidia-cutlass-dsl wheel's .pth file adds in a normal install (a --target folder is not a
# site directory, so .pth files there are not read).
#
# GPU_ENV_CHECK=1 also imports fla's kernels, flash_attn.cute and mamba_ssm's SSD kernels (a few
# seconds; needs the GPU machine's torch and triton). Nothing here exits the calling shell: every
# failure is reported and the function returns non-zero.

_gmabench_gpu_env() {
    local root site py markers
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    site="${GMABENCH_SITE:-$root/.gpu-site}"
    py="${PYTHON:-python3}"
    markers="$site/.installed"
    mkdir -p "$markers" || return 1

    local installed=() kept=() failed=()
    local f name stamp

    # ---- the big archives: plain tar, into the site folder ---------------------------------
    for f in "$root"/.whl/big/*.tar.xz; do
        [[ -f "$f" ]] || continue
        name="$(basename "$f")"
        stamp="$(stat -c %s "$f")"
        if [[ "$(cat "$markers/$name" 2>/dev/null)" == "$stamp" ]]; then
            kept+=("$name")
            continue
        fi
        if tar -xJf "$f" -C "$site"; then
            echo "$stamp" >"$markers/$name"
            installed+=("$name")
        else
            failed+=("$name")
        fi
    done

    # ---- the small wheels: pip into a staging folder, merged into the site folder ----------
    local todo=()
    for f in "$root"/.whl/small/*.whl; do
        [[ -f "$f" ]] || continue
        name="$(basename "$f")"
        stamp="$(stat -c %s "$f")"
        if [[ "$(cat "$markers/$name" 2>/dev/null)" == "$stamp" ]]; then
            kept+=("$name")
        else
            todo+=("$f")
        fi
    done
    if ((${#todo[@]})); then
        local stage
        stage="$(mktemp -d "$site/.stage.XXXXXX")" || return 1
        # pip --target replaces (with --upgrade) or skips (without) a top-level folder that exists
        # already, and nvidia_cutlass_dsl/ is shared by four wheels and the archive: stage, then merge.
        if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --disable-pip-version-check --target "$stage" "${todo[@]}" 2>"$stage.log"; then
            rm -rf "$stage/bin"          # console scripts with a shebang for the staging path
        else
            echo "gpu_env: pip refused the wheels ($(tail -n 1 "$stage.log")); unzipping them instead"
            rm -rf "$stage" && mkdir -p "$stage" || return 1
            local ok=1 data sub
            for f in "${todo[@]}"; do
                unzip -qo "$f" -d "$stage" || { ok=0; failed+=("$(basename "$f")"); }
            done
            # Wheel payloads under NAME.data/{purelib,platlib} belong at the top level.
            for data in "$stage"/*.data; do
                [[ -d "$data" ]] || continue
                for sub in purelib platlib; do
                    [[ -d "$data/$sub" ]] && cp -a "$data/$sub/." "$stage/"
                done
                rm -rf "$data"
            done
            ((ok)) || echo "gpu_env: some wheels did not unzip"
        fi
        rm -f "$stage.log"
        if cp -a "$stage/." "$site/"; then
            for f in "${todo[@]}"; do
                name="$(basename "$f")"
                [[ " ${failed[*]} " == *" $name "* ]] && continue
                stat -c %s "$f" >"$markers/$name"
                installed+=("$name")
            done
        else
            failed+=("merge of the staged wheels")
        fi
        rm -rf "$stage"
    fi

    # ---- PYTHONPATH: the site folder and what nvidia_cutlass_dsl_packages.pth adds ----------
    local entry entries=("$site")
    [[ -d "$site/nvidia_cutlass_dsl/dsl_packages" ]] && entries=("$site/nvidia_cutlass_dsl/dsl_packages" "$site")
    local path=":${PYTHONPATH:-}:"
    for entry in "${entries[@]}"; do
        path="${path//:$entry:/:}"          # drop an earlier copy, so sourcing twice adds nothing
    done
    path="${path#:}"; path="${path%:}"
    PYTHONPATH="$(IFS=:; echo "${entries[*]}")${path:+:$path}"
    export PYTHONPATH

    # ---- report -------------------------------------------------------------------------------
    echo "gpu_env: site $site"
    ((${#installed[@]})) && printf 'gpu_env: installed %s\n' "${installed[@]}"
    ((${#kept[@]})) && echo "gpu_env: already installed: ${#kept[@]} (${kept[*]})"
    ((${#installed[@]} + ${#kept[@]})) || echo "gpu_env: nothing carried in .whl/small or .whl/big"
    echo "gpu_env: PYTHONPATH=$PYTHONPATH"
    local label rel missing=()
    for rel in fla/__init__.py flash_attn/cute/__init__.py mamba_ssm/ops/triton/ssd_combined.py \
               nvidia_cutlass_dsl/dsl_packages/cutlass/__init__.py nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so; do
        [[ -f "$site/$rel" ]] || missing+=("$rel")
    done
    ((${#missing[@]})) && echo "gpu_env: not (yet) in the site folder: ${missing[*]}"
    if ((${#failed[@]})); then
        echo "gpu_env: FAILED: ${failed[*]}"
        return 1
    fi
    if [[ "${GPU_ENV_CHECK:-0}" == 1 ]]; then
        (cd "$root" && "$py" - <<'PY'
import importlib, time
checks = [
    ("fla", lambda: importlib.import_module("fla.ops.linear_attn").chunk_linear_attn),
    ("fla simple_gla", lambda: importlib.import_module("fla.ops.simple_gla").chunk_simple_gla),
    ("flash_attn.cute", lambda: importlib.import_module("flash_attn.cute").flash_attn_func),
    # mamba_ssm/__init__.py imports CUDA extensions a Triton-only install lacks: gmabench's
    # loader skips it, as the mamba2-ssd mixer does.
    ("mamba_ssm ssd_combined", lambda: __import__("gmabench.mixers.mamba2", fromlist=["x"])
        .load_mamba_ssd_combined().mamba_chunk_scan_combined),
]
bad = 0
for label, load in checks:
    t0 = time.perf_counter()
    try:
        obj = load()
        print(f"gpu_env check: {label}: ok ({obj.__module__}, {time.perf_counter() - t0:.1f} s)")
    except Exception as exc:
        bad += 1
        print(f"gpu_env check: {label}: FAILED {type(exc).__name__}: {exc}")
raise SystemExit(1 if bad else 0)
PY
        ) || return 1
    fi
    return 0
}

_gmabench_gpu_env
_gmabench_gpu_env_rc=$?
unset -f _gmabench_gpu_env
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "gpu_env: run this with 'source scripts/gpu_env.sh' so that PYTHONPATH reaches your shell" >&2
    exit "$_gmabench_gpu_env_rc"
fi
(exit "$_gmabench_gpu_env_rc")
