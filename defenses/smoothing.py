"""Randomized smoothing with a certificate (Cohen, Rosenfeld, Kolter, ICML 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + d) = c)``, ``d ~ N(0, sigma^2 I)``, is robust in
L2: if the top class has probability at least ``pA`` then ``g`` is constant within radius
``sigma * PhiInv(pA)``. Cohen's two procedures, on batches of images:

- ``PREDICT`` (:meth:`SmoothedClassifier.predict`): ``n`` noisy votes; return the top class
  unless a two-sided binomial test of top vs runner-up has p-value > ``alpha`` (then abstain, -1).
- ``CERTIFY`` (:meth:`SmoothedClassifier.certify`): guess the class from ``n0`` votes, count it in
  ``n`` fresh votes, lower-bound ``pA`` with a one-sided Clopper-Pearson bound at level
  ``1 - alpha`` (scipy), abstain if the bound is below 1/2, else certify ``sigma * PhiInv(pA_lower)``.

As a model for attacks: without gradients the wrapper answers with ``g`` estimated from ``n0``
hard votes (log vote shares as logits); with gradients, the standard variant differentiates one
noisy draw and the adaptive variant uses EOT over ``eot_samples`` draws of the soft classifier
(the attack of Salman et al. 2019). The runner reports certified accuracy at ``radii`` and the
abstain rate with every record.

Example::

    smoothed = Smoothing(sigma=0.25, n0=100, n=1000, alpha=0.001).wrap(model)
    pred, radius = smoothed.certify(images)        # -1 where it abstains
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm

from fragility.defenses.base import DefendedClassifier, Defense, passes
from fragility.defenses.gaussian_noise import check_sigma, gaussian
from fragility.errors import ConfigError
from fragility.flags import parse_flag


class Smoothing(Defense):
    name = "smoothing"
    randomized = True

    def __init__(
        self,
        *,
        sigma: float | str = 0.25,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        abstain: bool = True,
        radii: list[float] | tuple[float, ...] = (0.0, 0.25, 0.5),
        certify: bool = True,
        max_batch: int = 1000,
        **kw,
    ) -> None:
        super().__init__(**kw)
        self.sigma = check_sigma(sigma)
        if self.sigma == 0:
            raise ConfigError("smoothing sigma must be > 0")
        if int(n0) < 1 or int(n) < 1 or int(max_batch) < 1:
            raise ConfigError(f"smoothing n0, n and max_batch must be >= 1, got n0={n0}, n={n}, max_batch={max_batch}")
        if not 0 < float(alpha) < 1:
            raise ConfigError(f"smoothing alpha must be in (0, 1), got {alpha}")
        self.n0, self.n, self.alpha = int(n0), int(n), float(alpha)
        self.abstain = parse_flag(abstain, "abstain")
        self.radii = [float(r) for r in radii]
        self.run_certify = parse_flag(certify, "certify")
        self.max_batch = int(max_batch)

    def params(self):
        return {"sigma": self.sigma, "n": self.n, "alpha": self.alpha}

    def transform(self, x, generator=None):
        return x + gaussian(x, self.sigma, generator)  # no clipping: the certificate assumes pure Gaussian noise

    def wrap(self, model):
        return SmoothedClassifier(model, self)


class SmoothedClassifier(DefendedClassifier):
    defense: Smoothing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and images.requires_grad:
            return super().forward(images)
        counts = self.votes(images, self.defense.n0)
        self.last_passes = self.defense.n0 * self._inner_passes
        return torch.log((counts.float() + 1e-3) / self.defense.n0)

    @torch.no_grad()
    def votes(self, images: torch.Tensor, num: int) -> torch.Tensor:
        """(N, classes) counts of ``argmax f(x + d)`` over ``num`` noise draws per image."""
        d = self.defense
        g = self.generator(images.device)
        counts = torch.zeros(len(images), self.num_classes, dtype=torch.long, device=images.device)
        self._inner_passes = 1
        per = max(1, d.max_batch // max(len(images), 1))  # draws per image in one forward
        done = 0
        while done < num:
            k = min(per, num - done)
            x = images.repeat_interleave(k, 0)
            pred = self.model(d.transform(x, g)).argmax(1).view(len(images), k)
            self._inner_passes = passes(self.model)
            counts.scatter_add_(1, pred, torch.ones_like(pred))
            done += k
        return counts

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Cohen's PREDICT: the top class of ``n`` votes, or -1 where the binomial test of top vs
        runner-up cannot reject a tie at level ``alpha``."""
        d = self.defense
        counts = self.votes(images, d.n).cpu()
        top2 = counts.topk(2, dim=1)
        out = top2.indices[:, 0].clone()
        if d.abstain:
            for i, (ca, cb) in enumerate(top2.values.tolist()):
                if binomtest(ca, ca + cb, 0.5).pvalue > d.alpha:
                    out[i] = -1
        return out

    def certify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cohen's CERTIFY: (class or -1, L2 radius or 0) per image."""
        d = self.defense
        guess = self.votes(images, d.n0).argmax(1)
        counts = self.votes(images, d.n).gather(1, guess[:, None]).squeeze(1).cpu().numpy()
        # One-sided (1 - alpha) Clopper-Pearson lower bound: the alpha quantile of Beta(k, n - k + 1).
        p_low = np.where(counts > 0, beta.ppf(d.alpha, np.maximum(counts, 1), d.n - counts + 1), 0.0)
        ok = p_low > 0.5
        radius = np.where(ok, d.sigma * norm.ppf(np.clip(p_low, 0.5, 1.0)), 0.0)
        pred = torch.where(torch.from_numpy(ok), guess.cpu(), torch.tensor(-1))
        return pred, torch.from_numpy(radius).float()


def certified_accuracy(pred: torch.Tensor, radius: torch.Tensor, labels: torch.Tensor, radii) -> dict[str, float]:
    """Certified accuracy at each radius (correct, not abstained, radius >= r) and abstain rate."""
    correct = (pred == labels.cpu()) & (pred >= 0)
    out = {f"certified_acc@{r:g}": float((correct & (radius >= r)).float().mean()) for r in radii}
    out["abstain_rate"] = float((pred < 0).float().mean())
    out["certified_n"] = len(pred)
    return out
