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


def test_the_contracts_layer_the_engine_and_cover_the_whole_application():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {contract["name"]: contract for contract in config["contracts"]}
    [layers] = [c for c in contracts.values() if c["type"] == "layers"]
    assert layers["layers"][0] == "oncely_billing" and layers["layers"][-1] == "oncely.errors"
    billing = contracts["oncely_billing uses only oncely's public API"]
    assert not billing.get("ignore_imports"), "the demo is an application like the rest"
    assert {"oncely.testing", "oncely.store", "oncely.worker"} <= set(billing["forbidden_modules"])
