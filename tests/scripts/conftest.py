"""scripts/form_timing.py for the tests of the scripts that time forms of one kernel."""

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="session")
def form_timing():
    spec = importlib.util.spec_from_file_location("form_timing", SCRIPTS / "form_timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
