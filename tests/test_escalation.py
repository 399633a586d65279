"""Escalation end to end: digits models that mask their gradients (logits x1000, input rounding,
input noise inside the network) are flagged, escalated, and reported near their true robustness;
an honest model raises no flag."""

from __future__ import annotations

import warnings

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from fragility.attacks.pgd import PGD
from fragility.attacks.square import Square
from fragility.benchmarks.checks import check_names, parse_flags
from fragility.benchmarks.escalation import plan
from fragility.benchmarks.runner import Trial, run
from fragility.benchmarks.store import ResultStore
from fragility.benchmarks.worst_case import worst_case
from fragility.datasets import Digits
from fragility.models.wrapper import Classifier

EPS = 0.1  # digits: an honest CNN keeps about 60% here, so the masked numbers have room to lie


class Masked(nn.Module):
    """The digits CNN behind one masking trick; [0, 1] input, normalization inside."""

    def __init__(self, net: nn.Module, kind: str, amount: float) -> None:
        super().__init__()
        self.net, self.kind, self.amount = net, kind, amount
        self.register_buffer("mean", torch.tensor(0.31))
        self.register_buffer("std", torch.tensor(0.38))

    def forward(self, x):
        if self.kind == "round":
            x = torch.round(x * self.amount) / self.amount
        elif self.kind == "noise":
            x = x + self.amount * torch.randn_like(x)
        z = self.net((x - self.mean) / self.std)
        return z * self.amount if self.kind == "scale" else z


class StraightThroughRound(nn.Module):
    """The rounding model's forward with the identity's gradient (BPDA): the reference attack."""

    def __init__(self, net: nn.Module, levels: float) -> None:
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x):
        r = x + (torch.round(x * self.levels) / self.levels - x).detach()
        return self.net((r - 0.31) / 0.38)


CASES = {"scale": 1000.0, "round": 4.0, "noise": 0.1}


def _scripted(digits_model, kind, amount, path):
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # torch.jit.script is deprecated but still what model.format=torchscript loads
        torch.jit.save(torch.jit.script(Masked(digits_model.net, kind, amount).eval()), str(path))
    return path


def _cfg(cfg_factory, path, *extra):
    return cfg_factory(
        "n_samples=48",
        "attack=pgd",
        f"attack.eps={EPS}",
        "model=checkpoint",
        f"model.path={path}",
        "+checks.probe_n=32",
        "+checks.square_queries=100",
        "+escalation.square_queries=300",
        "model.format=torchscript",
        "model.input_size=[1,8,8]",
        "model.mean=[0.0]",
        "model.std=[1.0]",
        *extra,
    )


def _reference(digits_model, kind, amount, x, y) -> float:
    """Robust accuracy under the attacks that see through the trick: per image, broken by any of
    PGD-20 on the unmasked equivalent (scale: the plain CNN; round: straight-through; noise: EOT
    is approximated by the plain CNN's PGD judged on the noisy model) and Square-500."""
    torch.manual_seed(0)
    plain = Classifier(digits_model.net, mean=[0.31], std=[0.38], input_size=(1, 8, 8), class_names=digits_model.class_names)
    masked = Classifier(
        Masked(digits_model.net, kind, amount), mean=[0.0], std=[1.0], input_size=(1, 8, 8), class_names=plain.class_names
    )
    through = plain
    if kind == "round":
        through = Classifier(
            StraightThroughRound(digits_model.net, amount),
            mean=[0.0],
            std=[1.0],
            input_size=(1, 8, 8),
            class_names=plain.class_names,
        )
    adv = PGD(eps=EPS, steps=20)(through, x, y).adv
    with torch.no_grad():
        broken = masked(adv).argmax(1) != y
    broken |= Square(eps=EPS, queries=500)(masked, x, y).success
    return 1 - broken.float().mean().item()


@pytest.mark.parametrize("kind", list(CASES))
def test_masked_model_is_flagged_escalated_and_reported_near_truth(kind, digits_model, cfg_factory, tmp_path):
    amount = CASES[kind]
    path = _scripted(digits_model, kind, amount, tmp_path / f"{kind}.pt")
    cfg = _cfg(cfg_factory, path)
    reported = run(cfg)
    store = ResultStore(cfg.results_dir)
    recs = store.records()
    standard = next(r for r in recs if r.variant == "standard")
    escalated = next(r for r in recs if r.variant == "escalated")
    expected = {"scale": {"zero_grad", "saturated"}, "round": {"zero_grad"}, "noise": {"random"}}[kind]
    assert expected <= set(parse_flags(standard.flags)), standard.flags
    assert escalated.flags == ""  # the flags stay on the original row
    assert escalated.attack == ("pgd" if kind == "noise" else "square")
    assert reported.robust_acc == min(standard.robust_acc, escalated.robust_acc)
    again = run(cfg)  # already stored: the rerun reports the same worst case, escalated row included
    assert (again.config_hash, again.robust_acc) == (reported.config_hash, reported.robust_acc)
    assert len(ResultStore(cfg.results_dir).records()) == len(recs)
    # "true" robustness: attacks that see through the trick, on the images the run attacked
    d = Digits("test").load(48, 0)
    ref = _reference(digits_model, kind, amount, d.images(slice(0, len(d))), d.y)
    summ = worst_case(recs, {r.config_hash: store.samples(r.config_hash) for r in recs})
    assert len(summ) == 1 and summ.loc[0, "per_sample"]
    assert summ.loc[0, "worst_robust_acc"] <= ref + 0.08, (summ.loc[0, "worst_robust_acc"], ref)
    if kind == "scale":  # masked: PGD alone is far above the truth, escalation is not
        assert standard.robust_acc >= ref + 0.2 and escalated.robust_acc <= ref + 0.08
    if kind == "round":  # rounding to quarters really resists eps 0.1 (the truth is high), but less than PGD says
        assert escalated.robust_acc < standard.robust_acc


def test_interrupted_escalation_runs_on_the_rerun(digits_model, cfg_factory, tmp_path, monkeypatch, capsys):
    """Stopped between the flagged row and its escalation (Ctrl-C, a lost machine), the rerun
    does not report the flagged number as done: it runs the missing escalation, and only that."""
    path = _scripted(digits_model, "scale", 1000.0, tmp_path / "scale.pt")
    cfg = _cfg(cfg_factory, path)

    def interrupted(self, e, variant):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trial, "run_escalation", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
    (standard,) = ResultStore(cfg.results_dir).records()
    assert standard.variant == "standard" and "saturated" in standard.flags
    capsys.readouterr()
    reported = run(cfg)
    out = capsys.readouterr().out
    assert "did not finish; running it now" in out and "escalating pgd" in out, out
    recs = ResultStore(cfg.results_dir).records()
    assert sorted(r.variant for r in recs) == ["escalated", "standard"]
    again = next(r for r in recs if r.variant == "standard")
    assert again.timestamp == standard.timestamp  # the flagged row was not attacked again
    escalated = next(r for r in recs if r.variant == "escalated")
    assert escalated.robust_acc < standard.robust_acc
    assert reported.robust_acc == escalated.robust_acc

    def no_build(*a, **k):
        raise AssertionError("nothing is left to run")

    monkeypatch.setattr(Trial, "build", no_build)
    assert run(cfg).robust_acc == escalated.robust_acc


def test_only_masking_checks_are_escalated_from_a_stored_row():
    stored = "constant_output 5/5; nonfinite_logits 2/40; zero_grad 32/32; saturated 30/32"
    assert check_names(stored) == ["zero_grad", "saturated"]
    assert check_names("") == [] and check_names("constant_output 5/5") == []


def test_escalate_false_only_flags(digits_model, cfg_factory, tmp_path):
    path = _scripted(digits_model, "scale", 1000.0, tmp_path / "scale.pt")
    cfg = _cfg(cfg_factory, path, "escalate=false")
    rec = run(cfg)
    recs = ResultStore(cfg.results_dir).records()
    assert [r.variant for r in recs] == ["standard"] and "zero_grad" in rec.flags


def test_honest_model_raises_no_flag(cfg_factory):
    cfg = cfg_factory("n_samples=48", "attack=pgd", f"attack.eps={EPS}", "+checks.square_queries=100")
    rec = run(cfg)
    recs = ResultStore(cfg.results_dir).records()
    assert rec.flags == "" and [r.variant for r in recs] == ["standard"]


def test_plan_answers_each_flag():
    node = OmegaConf.create({"_target_": "fragility.attacks.pgd.PGD", "eps": 0.1, "norm": "linf", "loss": "ce", "seed": 3})
    assert plan(["saturated"], node).attack.loss == "margin" and plan(["saturated"], node).eot_samples == 1
    sq = plan(["zero_grad", "saturated"], node).attack
    assert sq._target_.endswith("Square") and sq.eps == 0.1 and sq.norm == "linf" and sq.seed == 3
    p = plan(["random", "saturated"], node)
    assert p.eot_samples == 8 and p.attack.loss == "margin"
    assert plan([], node) is None and plan(["random"], node, answered={"random"}) is None
    patch = OmegaConf.create({"_target_": "fragility.attacks.patch.Patch", "size": 0.1})
    assert plan(["zero_grad"], patch) is None  # only Lp attacks escalate
