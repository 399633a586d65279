"""What a result row needs to be reproduced: versions, git commit, config hash, time."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path

import torch

import fragility
from fragility.budget import parse_number
from fragility.errors import ConfigError

# Top-level keys that change where or how results are shown, not what is measured.
NON_SEMANTIC_KEYS = (
    "results_dir",
    "results_db",
    "logger",
    "force",
    "device",
    "batch_size",
    "progress",
    "hydra",
    "allowed_targets",
    "explain",
)


_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(\s*/\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)?\s*$")


def canonical(value):
    """Numbers in one spelling before hashing: ``"1/10"``, ``"0.1"`` and ``0.1`` are the same
    budget, ``1.0`` and ``1`` the same number (strings that are not numbers stay as they are)."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, str) and _NUMBER.match(value):
        try:
            value = parse_number(value)
        except ConfigError:
            return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def config_hash(cfg: dict) -> str:
    semantic = canonical({k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS})
    blob = json.dumps(semantic, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        root = Path(fragility.__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
            )
            return out.stdout.strip()[:12] + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return ""


def _version(dist: str) -> str:
    """A package's installed version without importing it (importing torchvision costs ~1 s)."""
    try:
        return _dist_version(dist)
    except PackageNotFoundError:
        return ""


def versions() -> dict[str, str]:
    return {
        "fragility_version": fragility.__version__,
        "torch_version": torch.__version__,
        "torchvision_version": _version("torchvision"),
        "git_commit": git_commit(),
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
