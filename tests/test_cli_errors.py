"""Bad input through the real console script: one clear line, a non-zero exit, and the results
already written stay intact."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from fragility.benchmarks.runner import run
from fragility.benchmarks.store import ResultStore
from fragility.models.cifar_resnet import CifarResNet


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/fragility-test-pwned")

CASES = {
    "unknown-model": (["model=nope"], r"unknown model 'nope' \(valid: .*cifar_resnet.*digits_cnn"),
    "unknown-attack": (["attack=nope"], r"unknown attack 'nope' \(valid: .*fgsm.*pgd"),
    "unknown-dataset": (["dataset=nope"], r"unknown dataset 'nope' \(valid: .*digits"),
    "missing-checkpoint": (["model=cifar_resnet", "model.checkpoint={tmp}/missing.th"], "checkpoint not found"),
    "folder-checkpoint": (["model=cifar_resnet", "model.checkpoint={tmp}"], "is a folder, not a file$"),
    "corrupt-checkpoint": (["model=cifar_resnet", "model.checkpoint={tmp}/corrupt.th"], "corrupt"),
    "four-byte-checkpoint": (["model=cifar_resnet", "model.checkpoint={tmp}/junk.th"], "corrupt or unreadable checkpoint"),
    "mismatched-checkpoint": (
        ["model=cifar_resnet", "model.checkpoint={tmp}/resnet32.th"],
        "does not match.*; the file loads with model.depth=32$",
    ),
    "malicious-checkpoint": (["model=cifar_resnet", "model.checkpoint={tmp}/evil.th"], "refusing to load"),
    "bad-depth": (["model=cifar_resnet", "model.depth=21"], "6n\\+2"),
    "missing-dataset": (["dataset=cifar10_npz", "dataset.path={tmp}/nope.npz"], "dataset file not found"),
    "wrong-image-size": (["dataset=npz", "dataset.path={tmp}/rgb32.npz", "n_samples=10"], "expects 1x8x8"),
    "zero-samples": (["n_samples=0"], "n_samples must be positive"),
    "too-many-samples": (["n_samples=100000"], "only 539 images"),
    "negative-eps": (["attack.eps=-0.1"], "eps must be >= 0"),
    "unknown-setting": (
        ["attack=pgd", "attack.alpha=0"],
        r"unknown setting attack\.alpha: attack \(fragility\.attacks\.pgd\.PGD\) has eps, norm, steps, step_size",
    ),
    "unknown-top-level-setting": (["nsamples=3"], r"unknown setting nsamples: the config has model, .*n_samples"),
    "foreign-target": (["+model.extra._target_=os.system"], "refusing to instantiate"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    results = tmp / "results"
    from conftest import compose

    run(compose([f"results_dir={results}", "logger=none", "progress=false", "n_samples=30"]))
    (tmp / "corrupt.th").write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    (tmp / "junk.th").write_bytes(b"junk")  # torch's legacy reader fails with struct.error
    torch.save({"state_dict": {f"module.{k}": v for k, v in CifarResNet(32).state_dict().items()}}, tmp / "resnet32.th")
    (tmp / "evil.th").write_bytes(pickle.dumps({"state_dict": _Evil()}))
    np.savez(tmp / "rgb32.npz", x=np.zeros((20, 32, 32, 3), np.uint8), y=np.zeros(20, np.int64))
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in results.glob("leaderboard*")}
    rows_before = [r.config_hash for r in ResultStore(results).records()]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}

    def call(case):
        args = [a.format(tmp=tmp) for a in CASES[case][0]]
        p = subprocess.run(
            ["fragility", f"results_dir={results}", "logger=none", "progress=false", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        return case, p

    MARKER.unlink(missing_ok=True)
    with ThreadPoolExecutor(3) as pool:
        out = dict(pool.map(call, CASES))
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in results.glob("leaderboard*")}
    rows_after = [r.config_hash for r in ResultStore(results).records()]
    return out, before == after and rows_before == rows_after


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_nonzero_exit(case, outcomes):
    out, _ = outcomes
    p = out[case]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0, p.stdout + p.stderr
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("fragility: error: ")
    import re

    assert re.search(CASES[case][1], lines[0]), lines[0]


def test_results_intact_after_bad_runs(outcomes):
    _, intact = outcomes
    assert intact


def test_malicious_checkpoint_never_ran(outcomes):
    assert not MARKER.exists()


def test_flag_values_are_not_read_as_overrides(tmp_path):
    """``--config-dir DIR`` (Hydra's flag with its value as the next word) was parsed as an override."""
    from fragility.benchmarks.apps import precheck
    from fragility.errors import ConfigError

    weird = tmp_path / "my conf (v2)"  # a path Hydra's override grammar would reject
    weird.mkdir()
    precheck(["--config-dir", str(weird), "-m", "attack=fgsm,pgd"])
    precheck(["-cd", str(weird), "--config-name", "config", "attack=fgsm"])
    with pytest.raises(ConfigError, match="unknown attack 'nope'"):
        precheck(["-cd", str(weird), "attack=nope"])
    with pytest.raises(ConfigError, match="cannot parse the override"):
        precheck(["--config-dir", str(weird), "attack=[unclosed"])
