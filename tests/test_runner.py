"""End to end through run(cfg): metrics, store, skip, leaderboards, W&B offline files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fragility.benchmarks.leaderboard import COLUMNS
from fragility.benchmarks.runner import run
from fragility.benchmarks.store import ResultStore

REQUIRED = [
    "model",
    "dataset",
    "defense",
    "attack",
    "params",
    "n",
    "clean_acc",
    "robust_acc",
    "success_rate",
    "success_ci_low",
    "success_ci_high",
    "mean_queries",
    "mean_linf",
    "mean_l2",
    "seconds",
    "seed",
    "config_hash",
]


def test_digits_fgsm_end_to_end(cfg_factory):
    cfg = cfg_factory("n_samples=200")
    rec = run(cfg)
    assert rec.model == "digits_cnn" and rec.attack == "fgsm" and rec.n == 200
    assert rec.clean_acc >= 0.95
    assert rec.robust_acc < rec.clean_acc - 0.3  # eps 0.3 on digits (attack_dataset/fgsm_digits.yaml)
    assert rec.mean_linf == pytest.approx(0.3, abs=1e-4)
    assert rec.success_ci_low <= rec.success_rate <= rec.success_ci_high
    assert rec.torch_version and rec.timestamp and json.loads(rec.config_json)["attack"]["eps"] == 0.3
    out = Path(cfg.results_dir)
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(REQUIRED) <= set(board.columns) and list(board.columns) == COLUMNS
    assert (out / "leaderboard.md").read_text().count("digits_cnn") >= 2
    html = (out / "leaderboard.html").read_text()
    assert html.startswith("<!doctype html>") and "examples" in html
    assert (out / "runs" / rec.config_hash / "examples.png").stat().st_size > 1000
    assert len(ResultStore(out).samples(rec.config_hash)) == 200


def test_eps_zero_robust_equals_clean(cfg_factory):
    rec = run(cfg_factory("n_samples=100", "attack=pgd", "attack.eps=0"))
    assert rec.robust_acc == rec.clean_acc and rec.success_rate == 0


def test_pgd_at_least_as_strong_as_fgsm(cfg_factory):
    f = run(cfg_factory("n_samples=150", "attack.eps=0.15"))
    p = run(cfg_factory("n_samples=150", "attack=pgd", "attack.eps=0.15"))
    assert p.robust_acc <= f.robust_acc


def test_rerun_is_skipped_unless_forced(cfg_factory, capsys):
    first = run(cfg_factory("n_samples=50"))
    again = run(cfg_factory("n_samples=50"))
    assert again.timestamp == first.timestamp and "already in" in capsys.readouterr().out
    forced = run(cfg_factory("n_samples=50", "force=true"))
    assert forced.config_hash == first.config_hash
    assert len(ResultStore(cfg_factory().results_dir).records()) == 1


def test_a_model_with_random_weights_is_named_and_warned_about(cfg_factory, tmp_path, capsys):
    import numpy as np

    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=g.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), y=g.integers(0, 10, 12))
    rec = run(
        cfg_factory("model=cifar_resnet", "model.depth=8", "dataset=npz", f"dataset.path={tmp_path / 'd.npz'}", "n_samples=12")
    )
    assert rec.model == "cifar_resnet8@untrained"
    assert "warning: cifar_resnet8@untrained has random weights (no model.checkpoint)" in capsys.readouterr().out


def test_targeted_run(cfg_factory):
    rec = run(cfg_factory("n_samples=100", "attack=pgd", "attack.eps=0.4", "attack.steps=20", "attack.target=7"))
    assert rec.targeted and rec.success_rate > 0.8
    assert rec.n_attacked < 100  # images labelled 7 are not counted


def test_summary_is_worst_case_per_budget(cfg_factory):
    run(cfg_factory("n_samples=80", "attack.eps=0.2"))
    run(cfg_factory("n_samples=80", "attack=pgd", "attack.eps=0.2"))
    out = Path(cfg_factory().results_dir)
    summ = pd.read_csv(out / "summary.csv")
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(summ) == 1 and summ.loc[0, "min_single_attack"] == board["robust_acc"].min()
    # per sample: robust only where every attack failed, so at most the lowest single number
    store = ResultStore(out)
    frames = [store.samples(r.config_hash) for r in store.records()]
    robust = [(f["clean_pred"] == f["label"]) & (f["adv_pred"] == f["label"]) for f in frames]
    assert summ.loc[0, "per_sample"] and summ.loc[0, "worst_robust_acc"] == (robust[0] & robust[1]).mean()
    assert summ.loc[0, "worst_robust_acc"] <= board["robust_acc"].min()
    assert summ.loc[0, "worst_attack"] == "pgd"
    assert board.loc[0, "attack"] == "pgd"  # strongest attack ranked first


def test_wandb_offline_run_holds_metrics_and_images(tmp_path):
    from conftest import compose

    cfg = compose([f"results_dir={tmp_path}", "logger=wandb", "progress=false", "n_samples=40"])
    rec = run(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    summary = _wandb_history(next(runs[0].glob("*.wandb")))
    assert summary["robust_acc"] == pytest.approx(rec.robust_acc)
    assert summary["clean_acc"] == pytest.approx(rec.clean_acc)
    assert list((files / "media" / "images").glob("examples*.png"))
    assert list((files / "media" / "table").glob("leaderboard_row*.json"))


def _wandb_history(path: Path) -> dict:
    """Logged values from an offline .wandb file (a LevelDB-style log of protobuf records)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    raw, pos, block, buf, out = path.read_bytes(), 7, 32768, b"", {}
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += left - 7
            continue
        buf, pos = buf + raw[pos : pos + length], pos + length
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                out.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return out


def test_wandb_failure_keeps_local_results(tmp_path, monkeypatch):
    import wandb
    from conftest import compose

    def broken(*a, **k):
        raise RuntimeError("service unavailable")

    monkeypatch.setattr(wandb, "init", broken)
    rec = run(compose([f"results_dir={tmp_path}", "logger=wandb", "progress=false", "n_samples=30"]))
    assert ResultStore(tmp_path).get(rec.config_hash) is not None
    assert (tmp_path / "leaderboard.csv").exists()


def test_a_figure_that_fails_keeps_the_result(cfg_factory, monkeypatch):
    """A plotting failure after the attack used to abort the run and lose its numbers."""
    import fragility.benchmarks.runner as runner_module

    def broken(ctx, attack):
        raise RuntimeError("matplotlib fell over")

    broken.__name__ = "run_figures"
    monkeypatch.setattr(runner_module, "run_figures", broken)
    rec = run(cfg_factory("n_samples=10"))
    assert rec.n == 10 and ResultStore(json.loads(rec.config_json)["results_dir"]).has(rec.config_hash)
    assert json.loads(rec.extra_json)["figure_errors"] == ["run_figures: RuntimeError: matplotlib fell over"]


def test_a_run_with_nothing_to_attack_says_so(cfg_factory, tmp_path, capsys):
    """Labels that never match the model's answer (a class-name mix-up) used to print "success
    nan%  queries nan": the line now reads n/a, and a warning says why."""
    import numpy as np

    rec = None
    for label in (0, 1):  # a black image is one class; the other label is then never right
        path = tmp_path / f"black{label}.npz"
        np.savez(path, x=np.zeros((6, 8, 8, 1), np.uint8), y=np.full(6, label))
        rec = run(cfg_factory("dataset=npz", f"dataset.path={path}", "n_samples=6", "attack=fgsm"))
        if rec.clean_acc == 0:
            break
    assert rec.clean_acc == 0 and rec.n == 6 and rec.n_attacked == 0
    out = capsys.readouterr().out
    assert "success n/a  queries n/a" in out and "nan" not in out
    assert "classifies none of the 6 images correctly, so nothing was attacked" in out
