"""The registry: names, errors, lazy imports, availability reasons, and agreement with the classes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gmabench.mixers import registry
from gmabench.mixers.registry import (MIXERS, UnknownMixerError, availability, get_entry,
                                      list_mixers, load_mixer, mixer_names)

NAMES = mixer_names()
EXPECTED = {"gma", "gma-reference", "gma-chunked", "gma-triton", "gma-triton-fast", "gma-triton-split", "gma-triton-fp16",
            "gma-triton-ieee", "gma-fla", "softmax-naive",
            "sdpa", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math", "linear-attention",
            "performer", "mamba2", "mamba2-ssd", "mamba2-ssd-chunk64", "fla-linear-attention",
            "fla-simple-gla", "flash-attn"}


def test_names_are_unique_and_include_every_family():
    assert len(NAMES) == len(set(NAMES))
    assert EXPECTED <= set(NAMES)


def test_unknown_name_error_names_the_value_and_lists_known_names():
    with pytest.raises(UnknownMixerError) as info:
        get_entry("flash-gma")
    message = str(info.value)
    assert "'flash-gma'" in message
    assert all(name in message for name in NAMES)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownMixerError):
        load_mixer("flash-gma")


def test_availability_of_unknown_name_is_false_not_an_exception():
    ok, reason = availability("nope")
    assert not ok and "unknown mixer 'nope'" in reason


def test_registry_imports_no_torch_and_listing_imports_no_optional_package():
    code = ("import sys; import gmabench.mixers; torch_at_import = 'torch' in sys.modules; "
            "gmabench.mixers.list_mixers(); "
            "loaded = [m for m in ('fla', 'mamba_ssm', 'triton', 'gmabench.mixers.base', "
            "'gmabench.mixers.sdpa') if m in sys.modules]; print(torch_at_import, loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Listing may load torch (to ask about CUDA) but no optional package and no mixer module.
    assert out.stdout.strip() == "False []", out.stdout + out.stderr


@pytest.mark.parametrize("name", NAMES)
def test_every_target_imports_and_instantiates_on_cpu(name):
    mixer = load_mixer(name)
    entry = get_entry(name)
    assert mixer.name == name
    assert mixer.cuda_only == entry.cuda_only
    assert mixer.uses_components == entry.k_applies


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given without CUDA")
def test_list_mixers_reports_missing_optional_packages_and_cuda():
    rows = {row["name"]: row for row in list_mixers()}
    assert list(rows) == NAMES
    for row in rows.values():
        assert set(row) == {"name", "family", "description", "k_applies", "available", "reason"}
    for name, package in (("gma-fla", "fla"), ("fla-linear-attention", "fla"),
                          ("fla-simple-gla", "fla"), ("mamba2-ssd", "mamba_ssm"),
                          ("mamba2-ssd-chunk64", "mamba_ssm"),
                          ("flash-attn", "flash_attn")):
        assert not rows[name]["available"]
        assert f"'{package}'" in rows[name]["reason"]
    for entry in MIXERS:
        ok, reason = availability(entry.name)
        if entry.cuda_only:
            assert not ok and "needs CUDA" in reason
        elif not entry.requires and not entry.requires_any:
            assert ok and reason == ""


def test_availability_names_a_missing_module(monkeypatch):
    entry = registry.MixerEntry("fake", "test", "gmabench.mixers.sdpa:SDPA",
                                requires=("surely_not_installed_pkg_xyz",))
    monkeypatch.setitem(registry._BY_NAME, "fake", entry)
    ok, reason = availability("fake")
    assert not ok and "'surely_not_installed_pkg_xyz'" in reason


def test_availability_accepts_any_one_of_alternative_packages(monkeypatch):
    one_present = registry.MixerEntry("fake", "test", "gmabench.mixers.sdpa:SDPA",
                                      requires_any=("surely_not_installed_pkg_xyz", "json"))
    monkeypatch.setitem(registry._BY_NAME, "fake", one_present)
    assert availability("fake") == (True, "")
    none_present = registry.MixerEntry("fake", "test", "gmabench.mixers.sdpa:SDPA",
                                       requires_any=("surely_not_installed_pkg_xyz", "nor_this_one_xyz"))
    monkeypatch.setitem(registry._BY_NAME, "fake", none_present)
    ok, reason = availability("fake")
    assert not ok and "'surely_not_installed_pkg_xyz' or 'nor_this_one_xyz'" in reason


def test_out_of_tree_mixers_join_through_the_environment(monkeypatch):
    monkeypatch.setenv(registry.PLUGIN_VARIABLE, "my-softmax=gmabench.mixers.softmax:SoftmaxNaive")
    assert mixer_names()[-1] == "my-softmax"
    assert get_entry("my-softmax").family == "plugin"
    mixer = load_mixer("my-softmax")
    assert mixer.name == "my-softmax" and availability("my-softmax") == (True, "")
    assert any(row["name"] == "my-softmax" for row in list_mixers())


@pytest.mark.parametrize("spec", ["no-target", "x=module_without_class", "sdpa=gmabench.mixers.sdpa:SDPA"])
def test_malformed_plugin_variable_is_an_error_naming_the_item(monkeypatch, spec):
    monkeypatch.setenv(registry.PLUGIN_VARIABLE, spec)
    with pytest.raises(ValueError, match=registry.PLUGIN_VARIABLE):
        mixer_names()


def test_mamba2_ssd_runs_in_mamba2s_chunks_and_says_so():
    # Mamba2's module passes chunk_size=256 to these kernels; 64 stays registered under its own name
    default, small = load_mixer("mamba2-ssd"), load_mixer("mamba2-ssd-chunk64")
    assert (default.chunk_size, small.chunk_size) == (256, 64)
    assert default.backend({}, True) == "mamba_ssm, chunks of 256"
    assert small.backend({}, True) == "mamba_ssm, chunks of 64"
    assert load_mixer("mamba2").chunk_size == 64   # the PyTorch twin's own chunking is unchanged
