"""ruff (configured in pyproject.toml) lints and formats the whole repository: one style, no markers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(args):
    exe = shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is missing: pip install -e '.[test]' installs it")
    p = subprocess.run([exe, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def test_no_formatter_markers():
    marked = [
        str(p.relative_to(REPO))
        for p in REPO.rglob("*.py")
        if not {"build", "results", ".git"} & set(p.relative_to(REPO).parts) and "fmt: " + "skip" in p.read_text()
    ]
    assert not marked, f"ruff is configured, not fought: remove the markers in {marked}"
