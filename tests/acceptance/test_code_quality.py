"""The code stays clean: ruff, mypy --strict and the import contracts pass on every run."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from tests.conftest import ROOT


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    result = run(sys.executable, "-m", "ruff", "check", "src", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean():
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_hold():
    if shutil.which("lint-imports") is None:
        pytest.fail("lint-imports is missing: install the test extras")
    result = run("lint-imports")
    assert result.returncode == 0, result.stdout + result.stderr
