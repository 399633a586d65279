"""Defenses: wrappers, BPDA / EOT, the smoothing certificate, runner variants, bad parameters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm
from torch import nn

from fragility.benchmarks.leaderboard import summary
from fragility.benchmarks.page import is_complete
from fragility.benchmarks.runner import run
from fragility.benchmarks.store import ResultStore
from fragility.defenses import JPEG, BitDepth, Checkpoint, DefendedClassifier, GaussianNoise, Median, Smoothing, set_adaptive
from fragility.errors import ConfigError
from fragility.models.checkpoint import file_sha256
from fragility.models.wrapper import Classifier

ALL = [JPEG(quality=75), BitDepth(bits=4), Median(kernel=3), GaussianNoise(sigma=0.1), Smoothing(sigma=0.25, n0=20, n=50)]
NON_DIFF = [JPEG(quality=75), BitDepth(bits=3), Median(kernel=3), Median(kernel=3, exact_gradient=False)]


@pytest.mark.parametrize("defense", ALL, ids=lambda d: d.name)
def test_wrapper_keeps_shape_range_and_interface(defense, tiny_model, tiny_batch):
    x, _ = tiny_batch
    t = defense.transform(x, torch.Generator().manual_seed(0))
    assert t.shape == x.shape
    if defense.name != "smoothing":  # smoothing adds unclipped noise on purpose (the certificate needs it)
        assert t.min() >= 0 and t.max() <= 1
    wrapped = defense.wrap(tiny_model)
    assert isinstance(wrapped, DefendedClassifier) and wrapped.input_size == tiny_model.input_size
    assert wrapped.class_names == tiny_model.class_names and wrapped.name == tiny_model.name
    assert wrapped.class_index("c3") == 3 and wrapped.num_classes == 10
    with torch.no_grad():
        assert wrapped(x).shape == (12, 10)
    with pytest.raises(Exception, match="expects 3x8x8"):
        wrapped.check_images(torch.rand(2, 3, 9, 9))


def test_transforms_do_what_they_say():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    q = BitDepth(bits=2).transform(x)
    assert set(torch.unique(torch.round(q * 3)).tolist()) <= {0.0, 1.0, 2.0, 3.0} and torch.allclose(q * 3, torch.round(q * 3))
    assert (JPEG(quality=100).transform(x) - x).abs().mean() < (JPEG(quality=10).transform(x) - x).abs().mean()
    spike = torch.zeros(1, 1, 5, 5)
    spike[0, 0, 2, 2] = 1.0
    assert Median(kernel=3).transform(spike).abs().max() == 0  # salt noise removed
    m = Median(kernel=3).transform(x)
    assert torch.equal(m[0, 1, 5, 7], x[0, 1, 4:7, 6:9].flatten().median())
    n = GaussianNoise(sigma=0.0).transform(x)
    assert torch.equal(n, x)
    gray = torch.rand(3, 1, 8, 8)
    assert JPEG(quality=90).transform(gray).shape == gray.shape  # greyscale digits


@pytest.mark.parametrize("defense", NON_DIFF, ids=lambda d: d.label())
def test_bpda_backward_is_the_approximation(defense, tiny_model, tiny_batch):
    x, y = tiny_batch
    wrapped = defense.wrap(tiny_model)
    if defense.name == "median":  # BPDA through the differentiable median, evaluated at T(x)
        xm = x.clone().requires_grad_(True)
        g = defense.approximation(xm)
        t = g + (defense.transform(x) - g).detach()
        (want,) = torch.autograd.grad(nn.functional.cross_entropy(tiny_model(t), y), xm)
    else:  # identity: the model's input gradient at T(x)
        z = defense.transform(x).detach().requires_grad_(True)
        (want,) = torch.autograd.grad(nn.functional.cross_entropy(tiny_model(z), y), z)
    # ... is exactly what the adaptive (BPDA) wrapper hands back for x
    wrapped.adaptive = True
    xa = x.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(nn.functional.cross_entropy(wrapped(xa), y), xa)
    assert torch.allclose(got, want, atol=1e-6) and got.abs().sum() > 0
    # the forward value is the defense's, not the identity's
    with torch.no_grad():
        assert torch.allclose(wrapped(x), tiny_model(defense.transform(x)), atol=1e-5)
    # standard variant: quantizers have derivative 0 almost everywhere, so the plain attack sees none
    wrapped.adaptive = False
    xs = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(nn.functional.cross_entropy(wrapped(xs), y), xs)
    if defense.name in ("jpeg", "bit_depth") or defense.params().get("gradient") == "none":
        assert plain.abs().sum() == 0
    else:  # the exact median: plain gradient already is the median's own, as BPDA's
        assert torch.allclose(plain, got, atol=1e-6)


class CallCounter(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x):
        self.rows.append(len(x))
        return self.model(x)


def test_eot_averages_probabilities_over_the_configured_draws(tiny_model, tiny_batch):
    x, y = tiny_batch
    k = 5
    defense = GaussianNoise(sigma=0.2, eot_samples=k, seed=3)
    counter = CallCounter(tiny_model)
    inner = Classifier(
        counter, mean=[0.0] * 3, std=[1.0] * 3, input_size=(3, 8, 8), class_names=tiny_model.class_names, name="tiny"
    )
    wrapped = defense.wrap(inner)
    set_adaptive(wrapped, True)
    xa = x.clone().requires_grad_(True)
    out = wrapped(xa)
    assert counter.rows == [k * len(x)]  # one batched forward over k draws of every image
    # recompute by hand with the same random stream: log of the mean of the k softmaxes
    g = torch.Generator().manual_seed(3)
    draws = defense.transform(x.repeat(k, 1, 1, 1), g)
    probs = torch.softmax(tiny_model(draws), 1).view(k, len(x), -1)
    assert torch.allclose(out.exp(), probs.mean(0), atol=1e-5)
    (grad,) = torch.autograd.grad(-out.gather(1, y[:, None]).sum(), xa)
    assert grad.abs().sum() > 0
    # without gradients (scoring) the defense is deployed as is: one draw
    counter.rows.clear()
    with torch.no_grad():
        wrapped(x)
    assert counter.rows == [len(x)]


def test_flags_decide_the_adaptive_variant():
    assert JPEG().needs_adaptive and BitDepth().needs_adaptive and Median().needs_adaptive
    assert GaussianNoise().needs_adaptive and Smoothing().needs_adaptive
    assert not JPEG(adaptive=False).needs_adaptive
    assert JPEG().adaptive_description() == "BPDA" and GaussianNoise(eot_samples=4).adaptive_description() == "EOT-4"
    assert JPEG(quality=50).label() == "jpeg(quality=50)"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: JPEG(quality=0), "jpeg quality must be an integer in 1..100, got 0"),
        (lambda: BitDepth(bits=9), "bit_depth bits must be an integer in 1..8, got 9"),
        (lambda: Median(kernel=4), "median kernel must be an odd integer >= 1 (e.g. 3), got 4"),
        (lambda: GaussianNoise(sigma=-0.1), "sigma must be >= 0, got -0.1"),
        (lambda: Smoothing(sigma=-1), "sigma must be >= 0, got -1"),
        (lambda: Smoothing(alpha=2), "smoothing alpha must be in (0, 1), got 2"),
        (lambda: GaussianNoise(eot_samples=0), "eot_samples must be >= 1, got 0"),
        (lambda: Checkpoint(path=None).wrap(None), "defense=checkpoint needs defense.path"),
    ],
)
def test_bad_parameters_raise_one_clear_line(make, message):
    with pytest.raises(ConfigError) as e:
        make()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_cli_bad_defense_parameter_is_one_line(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fragility.benchmarks.cli import main; main()",
            "defense=median",
            "defense.kernel=4",
            "logger=none",
            f"results_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip() == "fragility: error: median kernel must be an odd integer >= 1 (e.g. 3), got 4"


def test_every_defense_config_instantiates(cfg_factory):
    from fragility.benchmarks.config import group_options, safe_instantiate

    for name in group_options("defense"):
        cfg = cfg_factory(f"defense={name}")
        if name == "none":
            assert cfg.defense.name == "none"
        else:
            assert safe_instantiate(cfg.defense).name == name


# ---- randomized smoothing: the certificate against a model whose true radius is known ----------


def linear_binary(w: torch.Tensor, b: float) -> Classifier:
    """f(x) = class 1 if w.x + b > 0 else class 0: the smoothed classifier's exact L2 radius at x
    is |w.x + b| / ||w|| (its top-class probability is Phi(|w.x + b| / (sigma ||w||)))."""
    lin = nn.Linear(w.numel(), 1)
    with torch.no_grad():
        lin.weight.copy_(w.view(1, -1))
        lin.bias.fill_(b)

    class Net(nn.Module):
        def forward(self, x):
            s = lin(x.flatten(1))
            return torch.cat([-s, s], 1)

    return Classifier(Net(), mean=[0.0], std=[1.0], input_size=(1, 2, 2), class_names=["neg", "pos"], name="linear")


def test_smoothing_certificate_matches_the_true_radius_of_a_linear_model():
    torch.manual_seed(0)
    w, b, sigma = torch.tensor([1.0, -2.0, 0.5, 1.5]), -0.3, 0.5
    model = linear_binary(w, b)
    x = torch.rand(40, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    margin = x.flatten(1) @ w + b
    true_radius = margin.abs() / w.norm()
    smoothed = Smoothing(sigma=sigma, n0=100, n=20000, alpha=0.001, max_batch=200000).wrap(model)
    pred, radius = smoothed.certify(x)
    certified = pred >= 0
    assert (pred[certified] == (margin[certified] > 0).long()).all()  # never certifies the wrong class
    assert (radius <= true_radius + 1e-6).all()  # sound (a (1 - alpha) statement; no failure with this seed)
    # brute force: estimate pA from many more draws and invert Cohen's formula
    noise = torch.randn(100000, 4, generator=torch.Generator().manual_seed(2)) * sigma
    p_top = ((x.flatten(1)[:, None, :] + noise[None]) @ w + b > 0).float().mean(1)
    p_top = torch.maximum(p_top, 1 - p_top).numpy()
    brute = sigma * norm.ppf(np.clip(p_top, 1e-6, 1 - 1e-6))
    # clear of the boundary (the n0-vote guess is right) and inside the range a 20000-vote bound can reach
    clear = (true_radius > 0.25).numpy() & (p_top < 0.995)
    assert clear.sum() >= 10 and certified[torch.from_numpy(clear)].all()
    assert np.abs(brute[clear] - true_radius.numpy()[clear]).max() < 0.1  # the brute force agrees with theory
    gap = (true_radius - radius).numpy()[clear]
    assert gap.max() < 0.08, gap  # and CERTIFY is tight up to its confidence bound
    # PREDICT abstains on the decision boundary, answers far from it
    edge = torch.zeros(1, 1, 2, 2)
    edge.view(-1)[0] = 0.3  # w.x + b = 0
    far = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(1, 1, 2, 2)
    out = Smoothing(sigma=sigma, n=2000, alpha=0.001).wrap(model).predict(torch.cat([edge, far]))
    assert out.tolist() == [-1, 1]


# ---- the runner scores standard and adaptive variants --------------------------------------


def test_runner_scores_plain_and_bpda_variants(cfg_factory):
    cfg = cfg_factory("n_samples=60", "attack=pgd", "attack.eps=0.2", "defense=bit_depth", "defense.bits=3", "escalate=false")
    worst = run(cfg)
    recs = ResultStore(cfg.results_dir).records()
    by = {r.variant: r for r in recs}
    assert set(by) == {"standard", "adaptive"} and by["standard"].config_hash != by["adaptive"].config_hash
    assert by["standard"].defense == "bit_depth(bits=3)"
    assert by["standard"].robust_acc > by["adaptive"].robust_acc + 0.3  # gradient masking exposed
    assert worst.variant == "adaptive" and worst.robust_acc == min(r.robust_acc for r in recs)
    board = pd.read_csv(Path(cfg.results_dir) / "defense_leaderboard.csv")
    row = board.iloc[0]
    assert row["defense"] == "bit_depth(bits=3)"
    cols = [c for c in board.columns if c.startswith("pgd ")]
    assert len(cols) == 2 and any("[adaptive]" in c for c in cols)
    assert row["worst linf 0.2"] == pytest.approx(by["adaptive"].robust_acc)
    assert (Path(cfg.results_dir) / "defense_leaderboard.md").read_text().count("[adaptive]") >= 1
    again = run(cfg)  # both variants stored: skipped
    assert again.config_hash == worst.config_hash and len(ResultStore(cfg.results_dir).records()) == 2


def test_runner_adaptive_can_be_switched_off_and_none_has_one_variant(cfg_factory):
    cfg = cfg_factory("n_samples=30", "defense=jpeg", "defense.adaptive=false")
    run(cfg)
    run(cfg_factory("n_samples=30"))
    recs = ResultStore(cfg.results_dir).records()
    assert sorted(r.defense for r in recs) == ["jpeg(quality=75)", "none"] and all(r.variant == "standard" for r in recs)


@pytest.mark.parametrize("defense", ["jpeg", "gaussian_noise"])
def test_score_only_attack_runs_one_variant(cfg_factory, defense):
    """BPDA and EOT act on gradients only: Square asks for scores, so its adaptive run would be the
    standard run again at twice the cost. One row; a gradient attack on the same defense gets two."""
    cfg = cfg_factory("n_samples=20", "attack=square", "attack.queries=30", "attack.eps=0.2", f"defense={defense}")
    rec = run(cfg)
    recs = ResultStore(cfg.results_dir).records()
    assert [r.variant for r in recs] == ["standard"] and rec.config_hash == recs[0].config_hash
    run(cfg_factory("n_samples=20", "attack=fgsm", "attack.eps=0.2", f"defense={defense}", "escalate=false"))
    fgsm = [r.variant for r in ResultStore(cfg.results_dir).records() if r.attack == "fgsm"]
    assert sorted(fgsm) == ["adaptive", "standard"]


def test_a_random_model_is_flagged_and_its_exhaustive_check_is_not_complete(cfg_factory):
    """Gaussian noise in front of the model: two passes of the same images differ. The clean pass
    flags it, and the exhaustive one-pixel check, which asked each candidate of one draw, is not
    marked complete; behind a deterministic defense (JPEG) it is."""
    exhaustive = ["n_samples=16", "attack=sparse_rs", "attack.k=1", "attack.exhaustive=true"]
    rec = run(cfg_factory(*exhaustive, "defense=gaussian_noise"))
    assert "random_output 8/8" in rec.flags and not is_complete(rec)
    plain = run(cfg_factory(*exhaustive, "defense=jpeg"))
    assert "random_output" not in plain.flags and is_complete(plain)


def test_runner_smoothing_reports_certified_accuracy(cfg_factory):
    cfg = cfg_factory(
        "n_samples=40",
        "attack=fgsm",
        "attack.eps=0.1",
        "defense=smoothing",
        "defense.n0=16",
        "defense.n=64",
        "defense.eot_samples=2",
        "defense.sigma=0.12",
    )
    run(cfg)
    board = pd.read_csv(Path(cfg.results_dir) / "defense_leaderboard.csv")
    row = board.iloc[0]
    for c in ("certified_acc@0", "certified_acc@0.25", "certified_acc@0.5", "abstain_rate"):
        assert 0 <= row[c] <= 1
    assert row["certified_acc@0"] >= row["certified_acc@0.25"] >= row["certified_acc@0.5"]
    assert row["certified_acc@0"] > 0.5
    # with n = 64 votes and alpha = 0.001 the largest certifiable radius is sigma * PhiInv(0.001 ** (1/64))
    assert row["certified_acc@0.5"] == 0 and 0.12 * norm.ppf(0.001 ** (1 / 64)) < 0.5
    assert row["certified_acc@0"] + row["abstain_rate"] <= 1 + 1e-6  # stored as float32-derived values


def test_runner_checkpoint_defense(cfg_factory, tmp_path, digits_model):
    path = tmp_path / "robust.pt"
    torch.save(digits_model.net.state_dict(), path)
    rec = run(cfg_factory("n_samples=30", "defense=checkpoint", f"defense.path={path}", "defense.label=same"))
    assert rec.defense == "checkpoint(same)" and rec.variant == "standard"
    assert rec.weights_sha256 == file_sha256(path)  # the defense's weights, not the base model's cache file
    retrained = {
        k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in digits_model.net.state_dict().items()
    }
    torch.save(retrained, path)  # trained again into the same file: a second network under the same label
    again = run(cfg_factory("n_samples=30", "defense=checkpoint", f"defense.path={path}", "defense.label=same"))
    assert again.config_hash != rec.config_hash and again.weights_sha256 == file_sha256(path) != rec.weights_sha256
    store = ResultStore(cfg_factory().results_dir)
    assert len(summary(store.records())) == 2  # two networks: never one per-sample worst case
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    from fragility.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not match"):
        run(cfg_factory("n_samples=30", "defense=checkpoint", f"defense.path={bad}"))
