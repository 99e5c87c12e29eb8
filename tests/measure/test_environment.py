"""Provenance: the commit a run records, in a checkout and in a copy without .git."""

import re

from gmabench.measure.environment import git_commit


def test_git_commit_of_this_checkout_is_a_hash():
    commit = git_commit()
    assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit), commit


def test_git_commit_override_for_a_copy_without_git(monkeypatch):
    monkeypatch.setenv("GMABENCH_GIT_COMMIT", "0123abcd")
    assert git_commit() == "0123abcd"
    monkeypatch.setenv("GMABENCH_GIT_COMMIT", "  ")
    assert git_commit() != "  "
