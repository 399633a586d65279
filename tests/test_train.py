"""fragility-train: the digits FGSM-RS recipe, resuming, checkpoint format, schedules."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fragility.benchmarks.train import evaluate, lr_at, train
from fragility.errors import CheckpointError


def compose_train(*overrides: str):
    from hydra import compose, initialize_config_module

    import fragility.benchmarks.config  # noqa: F401  (frac resolver)

    with initialize_config_module(config_module="fragility.conf", version_base="1.3"):
        return compose(config_name="train", overrides=["progress=false", *overrides])


def test_fgsm_rs_on_digits_raises_robust_accuracy_by_30_points(tmp_path, digits_model, digits_test):
    out = train(compose_train(f"out_dir={tmp_path}", "recipe=fgsm_rs", "eps=0.2", "eval_pgd_steps=0"))
    x, y = digits_test.x, digits_test.y
    base_clean, base_rob = evaluate(digits_model, x, y, 0.2, 10, 256, torch.device("cpu"))
    clean, rob = evaluate(out["model"], x, y, 0.2, 10, 256, torch.device("cpu"))
    assert base_clean > 0.9 and clean > 0.85
    assert rob >= base_rob + 0.30, (base_rob, rob)
    assert len(out["history"]) == 15 and (tmp_path / "history.json").is_file()


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    common = ["recipe=fgsm_rs", "epochs=3", "max_train=192", "val_size=32", "eval_pgd_steps=2", "batch_size=32"]
    full = train(compose_train(f"out_dir={tmp_path / 'a'}", *common))
    part = train(compose_train(f"out_dir={tmp_path / 'b'}", *common, "stop_after=2"))
    assert len(part["history"]) == 2
    resumed = train(compose_train(f"out_dir={tmp_path / 'b'}", *common))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    a, b = full["model"].net.state_dict(), resumed["model"].net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["history"][-1]["val_pgd_acc"] == full["history"][-1]["val_pgd_acc"]


def test_checkpoints_are_plain_and_load_with_weights_only(tmp_path):
    from fragility.defenses.checkpoint import Checkpoint
    from fragility.models.digits_cnn import build

    train(
        compose_train(
            f"out_dir={tmp_path}", "recipe=pgd", "pgd_steps=2", "epochs=1", "max_train=64", "val_size=16", "eval_pgd_steps=1"
        )
    )
    sd = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.is_tensor(v) for v in sd.values())
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["recipe"] == "pgd"
    defended = Checkpoint(path=str(tmp_path / "model.pt")).wrap(build())
    assert torch.equal(defended.model.net.conv1.weight, sd["conv1.weight"])


def test_resume_refuses_another_training(tmp_path):
    train(compose_train(f"out_dir={tmp_path}", "epochs=1", "max_train=64", "val_size=16", "eval_pgd_steps=1"))
    with pytest.raises(CheckpointError, match="another training"):
        train(compose_train(f"out_dir={tmp_path}", "epochs=2", "max_train=64", "val_size=16", "eval_pgd_steps=1"))


def test_learning_rate_schedules():
    cyc = compose_train("recipe=fgsm_rs", "lr_max=0.2")
    assert lr_at(cyc, 0, 100) == 0 and lr_at(cyc, 40, 100) == pytest.approx(0.2) and lr_at(cyc, 100, 100) == 0
    assert lr_at(cyc, 20, 100) == pytest.approx(0.1) and lr_at(cyc, 70, 100) == pytest.approx(0.1)
    pgd = compose_train("recipe=pgd", "lr_max=0.1")
    assert [lr_at(pgd, s, 100) for s in (0, 49, 50, 75)] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_cli_bad_recipe_is_one_line(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "fragility.benchmarks.train", "recipe=free", f"out_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip() == "fragility-train: error: unknown recipe 'free' (valid: fgsm_rs, pgd, standard, gaussian)"
