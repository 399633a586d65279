"""A run stopped part way resumes after its last finished batch, and writes the rows an
uninterrupted run would have written; a partial file that is not this run's is not used."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import compose

from fragility.attacks.patch import Patch
from fragility.attacks.square import Square
from fragility.benchmarks.partial import PARTIAL, attack_state, model_digest
from fragility.benchmarks.runner import run
from fragility.benchmarks.store import ResultStore

ARGS = ["attack=square", "attack.eps=0.1", "attack.queries=60", "n_samples=80", "batch_size=16", "logger=none"]
MARKER = Path("/tmp/fragility-test-partial-pwned")


@pytest.fixture(autouse=True)
def _save_after_every_batch(monkeypatch):
    monkeypatch.setattr("fragility.benchmarks.partial.SAVE_EVERY_S", 0.0)


def _cfg(results: Path, *extra: str):
    return compose([f"results_dir={results}", "progress=false", *ARGS, *extra])


def _samples(results: Path):
    store = ResultStore(results)
    (rec,) = store.records()
    return rec, store.samples(rec.config_hash).sort_values("sample_id").reset_index(drop=True)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _count_batches(monkeypatch, stop_at: int | None = None) -> list[int]:
    calls: list[int] = []
    original = Square._run

    def counted(self, *a, **k):
        calls.append(1)
        if stop_at is not None and len(calls) == stop_at:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(Square, "_run", counted)
    return calls


def _interrupted_run(results: Path, monkeypatch, *extra: str) -> None:
    """Run the configuration and stop it with Ctrl-C as its third batch starts."""
    with monkeypatch.context() as m:
        _count_batches(m, stop_at=3)
        with pytest.raises(KeyboardInterrupt):
            run(_cfg(results, *extra))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    results = tmp_path_factory.mktemp("whole")
    run(_cfg(results))
    return _samples(results)


def test_interrupted_run_resumes_after_its_finished_batches(uninterrupted, tmp_path, monkeypatch, capsys):
    whole_rec, whole = uninterrupted
    results = tmp_path / "r"
    _interrupted_run(results, monkeypatch)
    assert ResultStore(results).records() == []  # nothing half-written in the store
    (partial,) = (results / "runs").glob(f"*/{PARTIAL}")
    assert torch.load(partial, weights_only=True)["done"] == 32  # two batches of 16 finished
    capsys.readouterr()
    calls = _count_batches(monkeypatch)
    run(_cfg(results))
    assert "resuming after 32/" in capsys.readouterr().out
    rec, resumed = _samples(results)
    n_batches = -(-rec.n_attacked // 16)
    assert len(calls) == n_batches - 2  # only the batches that had not finished
    assert (rec.config_hash, rec.n_attacked, rec.robust_acc) == (
        whole_rec.config_hash,
        whole_rec.n_attacked,
        whole_rec.robust_acc,
    )
    cols = ["sample_id", "success", "queries", "adv_pred", "linf", "l2"]
    cols = [c for c in cols if c in whole.columns]
    assert len(cols) >= 4, whole.columns
    assert resumed[cols].equals(whole[cols])
    assert not partial.exists()  # stored: the finished batches are not kept


@pytest.mark.parametrize("content", ["garbage", "evil", "other_run"])
def test_a_partial_file_that_is_not_this_runs_is_not_used(content, uninterrupted, tmp_path, monkeypatch):
    whole_rec, whole = uninterrupted
    results = tmp_path / "r"
    _interrupted_run(results, monkeypatch, "batch_size=8" if content == "other_run" else "batch_size=16")
    (partial,) = (results / "runs").glob(f"*/{PARTIAL}")
    if content == "garbage":
        partial.write_bytes(b"PK\x03\x04 not a partial file" * 5)
    elif content == "evil":
        partial.write_bytes(pickle.dumps({"key": _Evil()}))
    MARKER.unlink(missing_ok=True)
    calls = _count_batches(monkeypatch)
    run(_cfg(results))  # batch_size=16: an "other_run" file (batch size 8) has another key
    rec, samples = _samples(results)
    assert len(calls) == -(-rec.n_attacked // 16)  # every batch again
    assert samples["success"].equals(whole["success"]) and rec.robust_acc == whole_rec.robust_acc
    assert not MARKER.exists()
    assert not partial.exists()


def test_what_an_attack_learned_is_part_of_the_key():
    """Batches scored with one trained patch are never joined to batches scored with another."""
    patch = Patch(target=3)
    patch.patch = torch.zeros(1, 4, 4)
    before = attack_state(patch)
    patch.patch = torch.zeros(1, 4, 4).index_fill_(2, torch.tensor([1]), 0.5)
    assert attack_state(patch) != before and before != ""
    assert attack_state(Square(eps=0.1)) == ""  # nothing learned: nothing to compare


def test_batches_finished_within_the_save_interval_are_not_written(tmp_path, monkeypatch):
    """Saving costs milliseconds; a fast attack is not made to pay it after every batch."""
    monkeypatch.setattr("fragility.benchmarks.partial.SAVE_EVERY_S", 3600.0)
    results = tmp_path / "r"
    _interrupted_run(results, monkeypatch)
    assert list(results.glob(f"runs/*/{PARTIAL}")) == []


def test_other_weights_under_the_same_name_are_part_of_the_key():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
    assert model_digest(a) == model_digest(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert model_digest(a) != model_digest(b)
    b.weights_sha256 = "ab" * 32  # a checkpoint's file digest is used as it is
    assert model_digest(b) == "ab" * 32


def test_a_randomized_defense_resumes_with_the_draws_it_would_have_made(tmp_path, monkeypatch):
    """Gaussian noise in front of the model draws from the defense's own stream, which advances
    batch by batch: the resumed batches must start from the state the finished ones left, or their
    rows differ from an uninterrupted run's (10 of 80 did before the state was kept)."""
    noisy = "defense=gaussian_noise"
    run(_cfg(tmp_path / "whole", noisy))
    _, whole = _samples(tmp_path / "whole")
    _interrupted_run(tmp_path / "r", monkeypatch, noisy)
    run(_cfg(tmp_path / "r", noisy))
    _, resumed = _samples(tmp_path / "r")
    cols = ["sample_id", "success", "queries", "adv_pred", "linf", "l2"]
    cols = [c for c in cols if c in whole.columns]
    assert whole[cols].equals(resumed[cols])


def test_a_variant_cut_off_before_its_first_save_reruns_with_the_uninterrupted_draws(tmp_path, monkeypatch):
    """Behind a randomized defense the adaptive variant runs after the standard one in the same
    process. Stopped before it saved a batch, its rerun finds the standard row stored and starts
    the adaptive variant in a fresh process: it must draw what the uninterrupted run drew, so each
    run's random state starts from its own key, not from whatever ran before it."""
    from fragility.benchmarks.runner import Trial

    args = ["logger=none", "progress=false", "attack=pgd", "attack.eps=0.1", "attack.steps=3"]
    args += ["n_samples=60", "batch_size=16", "defense=gaussian_noise", "defense.sigma=0.1"]
    run(compose([f"results_dir={tmp_path / 'whole'}", *args]))
    original = Trial._attack_all

    def cut_off(self, variant, config_hash):
        if variant == "adaptive":
            raise KeyboardInterrupt
        return original(self, variant, config_hash)

    with monkeypatch.context() as m:
        m.setattr(Trial, "_attack_all", cut_off)
        with pytest.raises(KeyboardInterrupt):
            run(compose([f"results_dir={tmp_path / 'cut'}", *args]))
    assert [r.variant for r in ResultStore(tmp_path / "cut").records()] == ["standard"]
    torch.rand(7)  # the fresh process's global generator is wherever it is: no matter
    run(compose([f"results_dir={tmp_path / 'cut'}", *args]))
    cols = ["sample_id", "success", "queries", "adv_pred", "linf", "l2"]

    def by_variant(results: Path) -> dict:
        store = ResultStore(results)
        return {
            r.variant: store.samples(r.config_hash).sort_values("sample_id")[cols].reset_index(drop=True) for r in store.records()
        }

    whole, rerun = by_variant(tmp_path / "whole"), by_variant(tmp_path / "cut")
    assert sorted(rerun) == sorted(whole) and "adaptive" in rerun
    for v in rerun:
        assert whole[v].equals(rerun[v]), v
