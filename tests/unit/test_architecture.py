"""The layers of ARCHITECTURE.md hold (import-linter) and the code is lint-clean (ruff)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; it is in the test extra: pip install -e '.[test]'")
    return found


def test_import_layers_hold():
    done = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_ruff_lint_and_format_are_clean():
    ruff = _tool("ruff")
    lint = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout[-4000:]
    formatted = subprocess.run([ruff, "format", "--check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert formatted.returncode == 0, formatted.stdout[-4000:]


def _clean_env() -> dict[str, str]:
    """This process's environment without the TensorFlow settings conftest.py makes for the tests."""
    import os

    hidden = ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL")
    return {**{k: v for k, v in os.environ.items() if k not in hidden}, "PYTHONPATH": str(ROOT)}


def test_import_edgexfer_changes_no_environment():
    code = "import os, edgexfer, edgexfer.api, edgexfer.runtime; print('TF_USE_LEGACY_KERAS' in os.environ)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


@pytest.mark.integration
def test_tfmot_gets_keras_2_without_the_caller_setting_anything():
    code = (
        "from edgexfer.compress.config import PruneConfig; from edgexfer.compress.prune import make_schedule; "
        "make_schedule(PruneConfig.build(sparsity=0.5), 100); import os; print(os.environ['TF_USE_LEGACY_KERAS'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("1")
