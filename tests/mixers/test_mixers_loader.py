"""The mamba_ssm loader imports the Triton SSD module without running the package's __init__.

A fake mamba_ssm tree whose __init__ raises (as the real one does without its CUDA extensions)
proves the bypass on CPU; sibling imports inside the package must still resolve.
"""

from __future__ import annotations

import inspect
import sys

import pytest

from gmabench.mixers.mamba2 import load_mamba_ssd_combined


@pytest.fixture
def fake_mamba_ssm(tmp_path, monkeypatch):
    root = tmp_path / "mamba_ssm"
    triton_dir = root / "ops" / "triton"
    triton_dir.mkdir(parents=True)
    (root / "__init__.py").write_text("raise ImportError('selective_scan_cuda is not built')\n")
    (root / "ops" / "__init__.py").write_text("raise ImportError('ops/__init__ must not run')\n")
    (triton_dir / "__init__.py").write_text("")
    (triton_dir / "ssd_bmm.py").write_text("SCALE = 3\n")
    (triton_dir / "ssd_combined.py").write_text(
        "from mamba_ssm.ops.triton.ssd_bmm import SCALE\n\n"
        "def mamba_chunk_scan_combined(x, *args, **kwargs):\n"
        "    return SCALE * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    yield root
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        del sys.modules[name]


def test_loader_bypasses_the_broken_package_init(fake_mamba_ssm):
    with pytest.raises(ImportError, match="selective_scan_cuda"):
        import mamba_ssm  # noqa: F401  (the plain import fails, as on a Triton-only install)
    sys.modules.pop("mamba_ssm", None)

    module = load_mamba_ssd_combined()
    assert module.mamba_chunk_scan_combined(2) == 6
    assert module.__file__ == str(fake_mamba_ssm / "ops" / "triton" / "ssd_combined.py")
    assert load_mamba_ssd_combined() is module          # cached in sys.modules
    # The bare parents have a place on disk: inspect must not take them for built-ins (on the
    # H200, flash-attn-4's import raised "... is a built-in module" after mamba2-ssd had run).
    for package, folder in (("mamba_ssm", fake_mamba_ssm), ("mamba_ssm.ops", fake_mamba_ssm / "ops")):
        assert inspect.getfile(sys.modules[package]) == str(folder / "__init__.py")


def test_loader_says_what_is_missing(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match="pip install mamba-ssm"):
        load_mamba_ssd_combined()
