"""The code stays clean: ruff, mypy --strict and the import contracts pass on every run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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


def lint_imports() -> str:
    """The lint-imports beside this interpreter (the test extras' virtualenv), else on PATH."""
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is missing: install the test extras")
    return found


def test_import_contracts_hold():
    result = run(lint_imports(), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "oncely_billing uses only oncely's public API KEPT" in result.stdout


def test_the_contracts_layer_the_engine_and_cover_the_whole_application():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {contract["name"]: contract for contract in config["contracts"]}
    [layers] = [c for c in contracts.values() if c["type"] == "layers"]
    assert layers["layers"][0] == "oncely_billing" and layers["layers"][-1] == "oncely.errors"
    billing = contracts["oncely_billing uses only oncely's public API"]
    assert not billing.get("ignore_imports"), "the demo is an application like the rest"
    assert {"oncely.testing", "oncely.store", "oncely.worker"} <= set(billing["forbidden_modules"])
