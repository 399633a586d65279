"""FAB: the exact box-constrained projection (checked against scipy's LP), minimal perturbations on a
linear model (closed form), judged at eps, threat models and [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from fragility.attacks.fab import FAB, project_onto_hyperplane
from fragility.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Linear(nn.Module):
    def __init__(self, d: int, classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(d, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_projection_feasible_and_optimal():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(6, 12, generator=g, dtype=torch.float64)
    w = torch.randn(6, 12, generator=g, dtype=torch.float64)
    b = (w * torch.rand(6, 12, generator=g, dtype=torch.float64)).sum(1)  # a point of the box lies on it
    for norm in ("linf", "l2"):
        d = project_onto_hyperplane(p, w, b, norm)
        assert torch.allclose((w * (p + d)).sum(1), b, atol=1e-9)
        assert (p + d).min() >= -1e-12 and (p + d).max() <= 1 + 1e-12
    d = project_onto_hyperplane(p, w, b, "linf")
    for i in range(6):  # Linf: min t s.t. |d_j| <= t, <w, d> = c, 0 <= p + d <= 1 as an LP over (d, t)
        n = 12
        c = float(b[i] - (w[i] * p[i]).sum())
        a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
        bounds = [(-float(p[i, j]), 1 - float(p[i, j])) for j in range(n)] + [(0, None)]
        lp = linprog(
            np.r_[np.zeros(n), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w[i].numpy(), 0.0][None], b_eq=[c], bounds=bounds
        )
        assert lp.status == 0
        assert float(d[i].abs().max()) == pytest.approx(lp.fun, rel=1e-6, abs=1e-9)
    # L2 without an active box: the textbook projection c w / |w|^2
    q = torch.full((1, 12), 0.5, dtype=torch.float64)
    bb = (w[:1] * q).sum(1) + 1e-3
    d = project_onto_hyperplane(q, w[:1], bb, "l2")
    assert torch.allclose(d, 1e-3 * w[:1] / w[:1].pow(2).sum(), atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_minimal_on_a_linear_model(norm):
    model = Linear(3 * 6 * 6).eval()
    x = 0.45 + 0.1 * torch.rand(10, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    wd = model.fc.weight[y] - model.fc.weight[1 - y]
    gap = (z.gather(1, y[:, None]) - z.gather(1, (1 - y)[:, None]))[:, 0]
    closed = (gap / (wd.abs().sum(1) if norm == "linf" else wd.norm(dim=1))).detach()  # the boundary's distance
    res = FAB(eps=1.0, norm=norm, steps=50, n_target_classes=1)(model, x, y)
    ratio = res.extras["fab_norm"] / closed
    assert res.success.all()
    # never below the minimum; above it only by FAB's overshoot fixed point (eta = 1.05 gives ~0.5%)
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.01).all()
    # judged at eps: below the minimal norm nothing succeeds and the clean image comes back
    small = float(closed.min()) * 0.9
    res = FAB(eps=small, norm=norm, steps=50, n_target_classes=1)(model, x, y)
    assert not res.success.any()
    assert torch.equal(res.adv, x)
    assert (res.extras["fab_norm"] > small).all()


@pytest.mark.parametrize("targeted", [True, False])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_threat_model_and_range(targeted, norm, eps, tiny_model, tiny_batch):
    x, _ = tiny_batch
    with torch.no_grad():
        y = tiny_model(x).argmax(1)  # correctly classified, so success needs a perturbation
    res = FAB(eps=eps, norm=norm, steps=10, targeted=targeted, n_target_classes=2)(tiny_model, x, y)
    d = res.adv - x
    size = d.abs().flatten(1).amax(1) if norm == "linf" else d.flatten(1).norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert res.adv.min() >= 0 and res.adv.max() <= 1
    assert (res.queries <= 1 + 2 * 10 * 2).all()
    # success means a perturbation within eps was found
    assert (res.extras["fab_norm"][res.success] <= eps + 1e-5).all()


def test_bad_config(tiny_model, tiny_batch):
    with pytest.raises(ConfigError):
        FAB(eta=0.5)
    with pytest.raises(ConfigError):
        FAB()(tiny_model, *tiny_batch, targets=tiny_batch[1])
