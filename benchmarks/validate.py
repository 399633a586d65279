"""What the model says on the clean pass, checked before any attack runs.

A model whose logits are NaN or infinite, or that has fewer (or more) outputs than the classes it
declares, would give plausible but meaningless rows ("clean 4.0%, success 0.0%"): those stop the
run with one line (:class:`~fragility.errors.InputError`). A model whose output does not depend on
its input is scored, but flagged (``constant_output``): no attack can move it, so its robustness
number says nothing about the attacks. A model whose output differs between two passes of the same
images (a randomized defense, noise or dropout inside the network) is flagged ``random_output``: a
success is then decided on one draw, and a search that tried every candidate (the exhaustive
one-pixel check) is not a complete answer. Samples whose logits turn non-finite under attack are
counted as failed attacks with a per-sample flag by :class:`~fragility.attacks.base.Attack`.
"""

from __future__ import annotations

import torch

from fragility.benchmarks.checks import outputs_differ
from fragility.errors import InputError

PROBE_N = 64  # images of the first batch whose raw logits are inspected (shape, finiteness, constancy)
REPEAT_N = 8  # of those, the images passed a second time to see whether the output is random


@torch.inference_mode()
def validate_clean(model, data, clean_conf: torch.Tensor, device: torch.device) -> list[str]:
    """Check the clean pass of ``model`` on ``data``; returns flags (``"constant_output 64/64"``).

    ``clean_conf`` (softmax confidence of every image, from the clean predict) must be finite:
    NaN or +Inf anywhere in a row of logits makes it NaN. The raw logits of the first
    :data:`PROBE_N` images are checked for shape and finiteness (-Inf as well), for depending on
    the input, and, with a second pass, for giving the same logits twice."""
    name = getattr(model, "name", type(model).__name__)
    bad = (~torch.isfinite(clean_conf)).nonzero().flatten()
    if len(bad):
        raise InputError(
            f"model {name} gives non-finite logits (NaN or Inf) for {len(bad)} of {len(clean_conf)} clean images "
            f"(first: sample {int(data.ids[bad[0]])}); check the checkpoint and the input range"
        )
    n = min(PROBE_N, len(data))
    if n == 0:
        return []
    x = data.images(slice(0, n)).to(device)
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
    expected = len(getattr(model, "class_names", None) or data.class_names)
    if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise InputError(f"model {name} must return logits of shape (N, {expected}), got {shape} for {n} images")
    if logits.shape[1] != expected:
        raise InputError(f"model {name} returns {logits.shape[1]} logits per image but has {expected} classes")
    if not torch.isfinite(logits).all():
        raise InputError(f"model {name} gives non-finite logits (NaN or Inf) on clean images")
    flags = []
    varied = not torch.equal(x, x[:1].expand_as(x))
    if n > 1 and varied and torch.equal(logits, logits[:1].expand_as(logits)):
        flags.append(f"constant_output {n}/{n}")
    k = min(REPEAT_N, n)  # randomness shows on any image: a few keep the second pass cheap (VGG on a CPU)
    model.eval()
    try:
        again = model(x[:k])
    finally:
        model.train(was_training)
    differ = outputs_differ(logits[:k], again)  # the masking check's own rule
    if differ.any():
        flags.append(f"random_output {int(differ.sum())}/{k}")
    return flags


#: what each clean-pass flag means, for the line the runner prints
MEANING = {
    "constant_output": "its output does not depend on the input",
    "random_output": "two passes of the same images differ: one pass decides each success, and no answer is complete",
}
