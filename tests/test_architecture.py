"""The house rules, checked: imports flow one way (import-linter), the parts load without the
harness, and the wheel ships the library without the peer-comparison scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PARTS = ("attacks", "defenses", "models", "datasets", "benchmarks")


def _staged(tmp_path: Path) -> Path:
    """The installed layout (``fragility.attacks`` ...) as plain folders: import-linter walks the
    file system, which cannot see the editable install's folder mapping."""
    root = tmp_path / "site"
    shutil.copytree(REPO / "fragility", root / "fragility", ignore=shutil.ignore_patterns("__pycache__"))
    for part in PARTS:
        shutil.copytree(REPO / part, root / "fragility" / part, ignore=shutil.ignore_patterns("__pycache__", "peers"))
    return root


def _lint(site: Path, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter")
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [exe, "--no-cache", "--config", str(REPO / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_imports_flow_one_way(tmp_path):
    site = _staged(tmp_path)
    ok = _lint(site, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 kept, 0 broken" in ok.stdout
    # the contract bites: a part that reaches into the harness, even inside a function, breaks it
    (site / "fragility" / "attacks" / "sneaky.py").write_text("def f():\n    from fragility.benchmarks import runner\n")
    bad = _lint(site, tmp_path)
    assert bad.returncode != 0 and "fragility.attacks.sneaky -> fragility.benchmarks.runner" in bad.stdout


def test_parts_load_without_the_harness():
    code = (
        "import sys, fragility.attacks, fragility.defenses, fragility.models, fragility.datasets\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('fragility.benchmarks'))\n"
        "assert not loaded, loaded\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_wheel_holds_the_library_not_the_peer_scripts(tmp_path):
    src = tmp_path / "src"  # a clean copy: an in-tree build/ folder could carry stale modules into the wheel
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".git", "build", "results", "outputs", "multirun", "wandb", "*.egg-info", "__pycache__"),
    )
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    (wheel,) = tmp_path.glob("fragility-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for part in PARTS:
        assert f"fragility/{part}/__init__.py" in names
    assert "fragility/conf/config.yaml" in names
    assert not [n for n in names if "peers" in n or "/bench_" in n], "peer scripts must stay out of the wheel"
