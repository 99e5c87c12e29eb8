#!/usr/bin/env bash
# Fetch the optional competitors (fla, flash-attn-4 and its CuTe DSL stack, mamba_ssm's Triton
# kernels) as wheels for the GPU machine: CPython 3.12, manylinux x86_64, no network there.
#
# Runs HERE (network to PyPI, by name and version only). Writes, under the repo's ignored .whl/:
#   .whl/small/*.whl     every wheel but one (about 12 MB together)
#   .whl/big/*.tar.xz    nvidia-cutlass-dsl-libs-cu13, unpacked and recompressed: the wheel is
#                        ~92 MB, over the 64 MiB a device call may carry; the archive is ~50 MiB
# scripts/gpu_env.sh installs both on the GPU machine (see docs/competitors.md for the recipe).
#
# Idempotent: wheels already in place are not fetched again and the archive is rebuilt only when
# missing or broken (FORCE=1 rebuilds it). Needs: pip, unzip, tar, xz, and torch importable by
# $PYTHON (mamba-ssm's setup.py imports it while building its pure-Python wheel).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SMALL="$ROOT/.whl/small"
BIG="$ROOT/.whl/big"

# ---- pinned versions (what resolved together on 2026-11-28; see docs/competitors.md) ----------
FLA_VERSION=0.6.0                 # flash-linear-attention and fla-core (the kernels, in fla/ops)
FA4_VERSION=4.0.0b36              # flash-attn-4: flash_attn.cute
CUTLASS_DSL_VERSION=4.8.1         # nvidia-cutlass-dsl and its libs-base, libs-core, libs-cu13
TVM_FFI_VERSION=0.1.15.post2      # apache-tvm-ffi (flash-attn-4 needs >=0.1.11,<0.2)
DLPACK_EXT_VERSION=0.1.5          # torch-c-dlpack-ext
QUACK_VERSION=0.6.5               # quack-kernels (flash-attn-4 needs >=0.5.3)
MAMBA_VERSION=2.3.2.post1         # mamba-ssm, built here without its CUDA extensions

SMALL_SPECS=(
    "flash-linear-attention==$FLA_VERSION"
    "fla-core==$FLA_VERSION"
    "flash-attn-4==$FA4_VERSION"
    "nvidia-cutlass-dsl==$CUTLASS_DSL_VERSION"
    "nvidia-cutlass-dsl-libs-base==$CUTLASS_DSL_VERSION"
    "nvidia-cutlass-dsl-libs-core==$CUTLASS_DSL_VERSION"
    "apache-tvm-ffi==$TVM_FFI_VERSION"
    "torch-c-dlpack-ext==$DLPACK_EXT_VERSION"
    "quack-kernels==$QUACK_VERSION"
)
BIG_SPEC="nvidia-cutlass-dsl-libs-cu13==$CUTLASS_DSL_VERSION"
BIG_ARCHIVE="$BIG/nvidia_cutlass_dsl_libs_cu13-$CUTLASS_DSL_VERSION.tar.xz"

# Wheels for the GPU machine's interpreter, not this one's. pip matches manylinux_2_N exactly.
TARGET_FLAGS=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp)
for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
           manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    TARGET_FLAGS+=(--platform "${tag}_x86_64")
done

for tool in unzip tar xz; do
    command -v "$tool" >/dev/null || { echo "fetch_wheels: needs $tool" >&2; exit 1; }
done
mkdir -p "$SMALL" "$BIG"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
size_of() { find "$@" -type f -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }

# ---- 1. the small wheels ---------------------------------------------------------------------
echo "== downloading ${#SMALL_SPECS[@]} wheels into .whl/small"
"$PYTHON" -m pip download -q "${TARGET_FLAGS[@]}" -d "$SMALL" "${SMALL_SPECS[@]}"

# ---- 2. mamba-ssm as a pure-Python wheel (Triton kernels only; no CUDA extensions) ------------
if compgen -G "$SMALL/mamba_ssm-$MAMBA_VERSION-*.whl" >/dev/null; then
    echo "== mamba_ssm $MAMBA_VERSION wheel already built"
else
    "$PYTHON" -c "import torch" 2>/dev/null || {
        echo "fetch_wheels: building mamba-ssm needs torch importable by $PYTHON" >&2; exit 1; }
    echo "== building mamba-ssm $MAMBA_VERSION (MAMBA_SKIP_CUDA_BUILD=TRUE)"
    MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
        "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir \
        -w "$SMALL" "mamba-ssm==$MAMBA_VERSION"
fi
if unzip -l "$SMALL"/mamba_ssm-"$MAMBA_VERSION"-*.whl | grep -qE '\.so$'; then
    echo "fetch_wheels: the mamba_ssm wheel holds compiled extensions; expected pure Python" >&2
    exit 1
fi

# ---- 3. libs-cu13: unpack the wheel, recompress as tar.xz -------------------------------------
if [[ -z "${FORCE:-}" && -s "$BIG_ARCHIVE" ]] && xz -t "$BIG_ARCHIVE" 2>/dev/null; then
    echo "== $(basename "$BIG_ARCHIVE") already built"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "== downloading $BIG_SPEC"
    "$PYTHON" -m pip download -q "${TARGET_FLAGS[@]}" -d "$work/wheel" "$BIG_SPEC"
    wheel=("$work"/wheel/nvidia_cutlass_dsl_libs_cu13-*.whl)
    echo "   $(basename "${wheel[0]}"): $(mib "$(size_of "${wheel[0]}")")"
    mkdir -p "$work/tree"
    unzip -q "${wheel[0]}" -d "$work/tree"
    # The x86 branch filter and a dictionary as large as the biggest file (the 193 MB MLIR
    # module) take the archive from ~60 to ~50 MiB; decompressing needs ~260 MB of memory.
    echo "== compressing $(mib "$(size_of "$work/tree")") with xz (takes about 4 minutes)"
    tar -C "$work/tree" --owner=0 --group=0 --numeric-owner -cf - . \
        | xz -T1 --x86 --lzma2=preset=9e,dict=256MiB >"$BIG_ARCHIVE.part"
    mv "$BIG_ARCHIVE.part" "$BIG_ARCHIVE"
    rm -rf "$work"
    trap - EXIT
fi

# ---- 4. checks and sizes ----------------------------------------------------------------------
# Two versions of one distribution would stop pip on the GPU machine: refuse them here.
dupes="$(for w in "$SMALL"/*.whl; do basename "$w" | cut -d- -f1; done | sort | uniq -d)"
if [[ -n "$dupes" ]]; then
    echo "fetch_wheels: several versions in .whl/small of: $dupes (delete the stale ones)" >&2
    exit 1
fi

echo
echo "== .whl/small"
for w in "$SMALL"/*.whl; do printf '  %10d  %s\n' "$(stat -c %s "$w")" "$(basename "$w")"; done
echo "== .whl/big"
for a in "$BIG"/*; do printf '  %10d  %s\n' "$(stat -c %s "$a")" "$(basename "$a")"; done

small=$(size_of "$SMALL")
big=$(size_of "$BIG")
# What travels with every device call anyway: tracked and untracked-but-not-ignored files.
repo=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard 2>/dev/null \
       | xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
limit=$((64 * 1048576))
echo
echo "sizes: .whl/small $small bytes ($(mib "$small")), .whl/big $big bytes ($(mib "$big")), repo $repo bytes ($(mib "$repo"))"
echo "  call carrying .whl/small: $(mib $((small + repo))) of 64 MiB"
echo "  call carrying .whl/big:   $(mib $((big + repo))) of 64 MiB"
if ((small + big + repo < limit - 1048576)); then
    echo "  one call carrying .whl/small and .whl/big: $(mib $((small + big + repo))) of 64 MiB -- fits"
else
    echo "  one call carrying .whl/small and .whl/big: $(mib $((small + big + repo))) of 64 MiB -- too big; use two calls"
fi
((small + repo < 60 * 1048576)) || { echo "fetch_wheels: .whl/small is too large" >&2; exit 1; }
((big + repo < limit)) || { echo "fetch_wheels: .whl/big does not fit one call" >&2; exit 1; }
