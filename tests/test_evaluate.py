"""``fragility.benchmarks.evaluate``: the harness for a network held in Python."""

from __future__ import annotations

import pytest
import torch

from fragility.benchmarks.evaluate import evaluate
from fragility.benchmarks.page import rerun_command
from fragility.benchmarks.runner import run
from fragility.benchmarks.store import ResultStore
from fragility.errors import FragilityError


class Scaled(torch.nn.Module):
    """A plain module (no fragility wrapper) whose logits are multiplied: cross-entropy saturates."""

    def __init__(self, model, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.factor * self.model(x)


def test_same_numbers_as_the_command_line_and_answered_from_the_store(digits_model, digits_test, cfg_factory, tmp_path, capsys):
    x, y = digits_test.images(), digits_test.y
    rec = evaluate(digits_model, x, y, "fgsm", eps=0.2, results_dir=str(tmp_path / "ev"), progress=False)
    cli = run(cfg_factory("attack=fgsm", "attack.eps=0.2", f"n_samples={len(y)}"))  # the same 539 images
    assert rec.n == cli.n == len(y) and rec.dataset == "given"
    assert rec.clean_acc == cli.clean_acc and rec.robust_acc == cli.robust_acc  # FGSM is deterministic
    again = evaluate(digits_model, x, y, "fgsm", eps=0.2, results_dir=str(tmp_path / "ev"), progress=False)
    assert again.config_hash == rec.config_hash and "already in" in capsys.readouterr().out
    assert rerun_command(rec).startswith("evaluate(model, images, labels, 'fgsm', overrides=[")
    changed = Scaled(digits_model, 1.0)  # other weights (none of its own) or another type: another key
    other = evaluate(changed, x, y, "fgsm", eps=0.2, results_dir=str(tmp_path / "ev"), progress=False)
    assert other.config_hash != rec.config_hash and other.model.startswith("Scaled@")
    assert len(ResultStore(tmp_path / "ev").records()) == 2


def test_a_masked_plain_module_is_escalated_to_its_true_robustness(digits_model, digits_test, tmp_path):
    """Logits x 1000 make PGD's cross-entropy gradient vanish; the checks fire and the escalation
    brings the reported robust accuracy down to the unscaled model's."""
    x, y = digits_test.images()[:200], digits_test.y[:200]
    plain = evaluate(digits_model, x, y, "pgd", eps=0.3, results_dir=str(tmp_path), progress=False)
    masked = evaluate(Scaled(digits_model, 1000.0), x, y, "pgd", eps=0.3, results_dir=str(tmp_path), progress=False)
    assert masked.variant == "escalated" and masked.robust_acc <= plain.robust_acc + 0.02
    flagged = [r for r in ResultStore(tmp_path).records() if r.model.startswith("Scaled") and r.variant == "standard"]
    assert flagged and flagged[0].flags and flagged[0].robust_acc > 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attack": "nope"}, "unknown attack 'nope'"),
        ({"attack": "pgd", "alpha": 0.1}, "unknown setting attack.alpha"),
        ({"attack": "pgd", "eps": float("nan")}, "must be finite"),
        ({"attack": "fgsm", "images": "nan"}, "images contain NaN"),
        ({"attack": "fgsm", "images": "3d"}, r"images must be \(N, C, H, W\)"),
        ({"attack": "fgsm", "labels": "outside"}, "label 12 is outside the 10 classes"),
    ],
)
def test_bad_input_is_one_line(digits_model, digits_test, tmp_path, kwargs, message):
    x, y = digits_test.images()[:20].clone(), digits_test.y[:20].clone()
    images, labels = kwargs.pop("images", None), kwargs.pop("labels", None)
    if images == "nan":
        x[3, 0, 2, 2] = float("nan")
    elif images == "3d":
        x = x[:, 0]
    if labels == "outside":
        y[0] = 12
    with pytest.raises(FragilityError, match=message) as e:
        evaluate(digits_model, x, y, results_dir=str(tmp_path), progress=False, **kwargs)
    assert "\n" not in str(e.value)


def test_weights_changed_in_python_since_loading_are_other_weights(tmp_path, capsys):
    """A checkpoint's digest names its network only while it holds what was loaded: fine-tuned
    since, it is keyed and named by its weights now (never answered with the loaded weights' row),
    and the caller's object keeps its own name."""
    from fragility.models.checkpoint import file_sha256
    from fragility.models.cifar_resnet import build

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 32, 32, generator=g), torch.arange(6)
    torch.save(build(depth=8).net.state_dict(), tmp_path / "r8.pt")
    m = build(depth=8, checkpoint=str(tmp_path / "r8.pt"))
    sha = file_sha256(tmp_path / "r8.pt")
    kw = {"eps": 0.03, "results_dir": str(tmp_path / "ev"), "progress": False}
    first = evaluate(m, x, y, "fgsm", **kw)
    assert first.model == f"cifar_resnet8@{sha[:8]}" and first.weights_sha256 == sha
    with torch.no_grad():
        next(m.parameters()).mul_(1.5)  # a fine-tuning step, in place
    tuned = evaluate(m, x, y, "fgsm", **kw)
    assert "already in" not in capsys.readouterr().out
    assert tuned.config_hash != first.config_hash and tuned.weights_sha256 != sha
    assert tuned.model.startswith("cifar_resnet8@") and tuned.model != first.model
    assert m.name == f"cifar_resnet8@{sha[:8]}"  # the caller's object is not renamed
    fresh = build(depth=8)  # random weights: named so until they are trained
    assert evaluate(fresh, x, y, "fgsm", **kw).model == "cifar_resnet8@untrained"
    with torch.no_grad():
        next(fresh.parameters()).add_(0.1)
    assert "untrained" not in evaluate(fresh, x, y, "fgsm", **kw).model
