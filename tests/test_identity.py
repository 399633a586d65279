"""Models are identified by their weights: two checkpoints of one architecture stay apart, in the
record, the display name and the leaderboard summary."""

from __future__ import annotations

import hashlib

import torch

from fragility.benchmarks.leaderboard import summary
from fragility.benchmarks.runner import run
from fragility.benchmarks.store import ResultStore
from fragility.models.checkpoint import file_sha256
from fragility.models.digits_cnn import DigitsCNN
from fragility.models.digits_cnn import build as build_digits


def _two_checkpoints(tmp_path, digits_model):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(digits_model.net.state_dict(), a)
    torch.manual_seed(1)
    other = DigitsCNN()  # same architecture, other (untrained) weights
    torch.save(other.state_dict(), b)
    return a, b


def test_file_sha256_is_the_files_hash(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"weights")
    assert file_sha256(p) == hashlib.sha256(b"weights").hexdigest()


def test_display_name_and_hash_from_the_file(tmp_path, digits_model):
    a, b = _two_checkpoints(tmp_path, digits_model)
    ma, mb = build_digits(checkpoint=str(a)), build_digits(checkpoint=str(b))
    assert ma.weights_sha256 == file_sha256(a) and ma.name == f"digits_cnn@{file_sha256(a)[:8]}"
    assert ma.name != mb.name and ma.weights_sha256 != mb.weights_sha256
    assert build_digits().name == "digits_cnn" and len(build_digits().weights_sha256) == 64  # the cached recipe model


def test_two_checkpoints_of_one_architecture_stay_apart(tmp_path, digits_model, cfg_factory):
    a, b = _two_checkpoints(tmp_path, digits_model)
    base = ["n_samples=40", "attack=fgsm", "attack.eps=0.1", "escalate=false"]
    ra = run(cfg_factory(*base, f"model.checkpoint={a}"))
    rb = run(cfg_factory(*base, f"model.checkpoint={b}"))
    assert ra.config_hash != rb.config_hash
    assert (ra.weights_sha256, rb.weights_sha256) == (file_sha256(a), file_sha256(b))
    recs = ResultStore(cfg_factory().results_dir).records()
    summ = summary(recs)
    assert len(summ) == 2 and set(summ["weights_sha256"]) == {file_sha256(a), file_sha256(b)}
    assert set(summ["model"]) == {f"digits_cnn@{file_sha256(a)[:8]}", f"digits_cnn@{file_sha256(b)[:8]}"}
