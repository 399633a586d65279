"""Differential evolution over a batch of independent problems, one population per problem.

SciPy's ``differential_evolution`` optimizes one problem at a time and calls the objective once
per generation with that problem's population. The one-pixel attack solves one problem per image,
and what costs time is the model's forward pass, so here every generation of every unfinished
problem is evaluated in one objective call (which the caller chunks into big model batches), and a
finished problem drops out of the next generation. That is what this short DE buys over SciPy's;
tests cross-check its minima against ``scipy.optimize.differential_evolution`` on the same budget.

Strategies (Storn & Price 1997): ``rand1`` (DE/rand/1: ``a + F (b - c)``, the one Su et al. use)
and ``best1`` (DE/best/1: ``best + F (b - c)``, SciPy's default), with a fixed ``F`` or a dithered
one drawn per problem and generation from ``[low, high)`` (SciPy's default ``(0.5, 1)``), each followed by binomial crossover with
probability ``crossover`` (1.0: the mutant is taken whole, i.e. no crossover). A trial replaces its
parent when its fitness is strictly lower. All randomness comes from a :class:`SampleRNG`, drawn in
the same sequence of calls whatever the batch holds, so a problem's result does not depend on the
other problems in the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fragility.errors import ConfigError
from fragility.rng import SampleRNG

STRATEGIES = ("rand1", "best1")

#: ``objective(pop, idx) -> (fitness, done)``: ``pop`` (n, P, D) candidates of problems ``idx``;
#: returns fitness (n, P) to minimize and a bool (n, P) "this candidate solves its problem".
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: ``repair(trial, idx, rng) -> trial``: put out-of-bounds coordinates back in the domain.
Repair = Callable[[torch.Tensor, torch.Tensor, SampleRNG], torch.Tensor]


@dataclass
class DEResult:
    x: torch.Tensor  # (N, D) the solving candidate, else the best one found
    fitness: torch.Tensor  # (N,) its fitness
    solved: torch.Tensor  # (N,) bool
    generations: torch.Tensor  # (N,) int64: generation that solved it (0 = initial population), else maxiter


Mutation = float | tuple[float, float]


def as_mutation(mutation) -> Mutation:
    """``F`` as a float, or a ``(low, high)`` pair for dithering (a fresh ``F ~ U[low, high)`` per
    problem and generation, as SciPy's ``mutation=(0.5, 1)``)."""
    if isinstance(mutation, (int, float)):
        return float(mutation)
    try:
        lo, hi = (float(v) for v in mutation)
    except (TypeError, ValueError):
        raise ConfigError(f"mutation F must be a number or a [low, high] pair, got {mutation!r}") from None
    return (lo, hi)


def check_settings(popsize: int, maxiter: int, mutation: Mutation, crossover: float, strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown DE strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    need = 4 if strategy == "rand1" else 3
    if popsize < need:
        raise ConfigError(f"DE/{strategy} needs popsize >= {need}, got {popsize}")
    if maxiter < 0:
        raise ConfigError(f"maxiter must be >= 0, got {maxiter}")
    lo, hi = (mutation, mutation) if isinstance(mutation, float) else mutation
    if not 0.0 < lo <= hi <= 2.0:
        raise ConfigError(f"mutation F must lie in (0, 2] (a dither range as low <= high), got {mutation}")
    if not 0.0 <= crossover <= 1.0:
        raise ConfigError(f"crossover must lie in [0, 1], got {crossover}")


def distinct_others(rng: SampleRNG, idx: torch.Tensor, pop: int, k: int) -> list[torch.Tensor]:
    """For every member i of a population of ``pop``, ``k`` indices drawn uniformly without
    replacement from ``{0..pop-1} \\ {i}``; each tensor has shape (len(idx), pop)."""
    me = torch.arange(pop, device=idx.device).expand(len(idx), pop)
    taken = [me]
    out = []
    for j in range(k):
        v = rng.randint(pop - 1 - j, pop, idx=idx)
        # skip over the indices already taken, in increasing order: a uniform draw among the rest
        for e in torch.sort(torch.stack(taken, -1), dim=-1).values.unbind(-1):
            v = v + (v >= e).long()
        taken.append(v)
        out.append(v)
    return out


def evolve(
    objective: Objective,
    init: torch.Tensor,
    rng: SampleRNG,
    idx: torch.Tensor,
    *,
    maxiter: int,
    mutation: Mutation = 0.5,
    crossover: float = 1.0,
    strategy: str = "rand1",
    repair: Repair | None = None,
) -> DEResult:
    """Minimize ``objective`` for N problems at once from populations ``init`` (N, P, D).

    ``idx`` are the problems' indices as the objective and ``rng`` know them (usually arange(N)).
    A problem stops when one of its candidates is ``done``; unfinished problems run ``maxiter``
    generations.
    """
    n, pop, dim = init.shape
    mutation = as_mutation(mutation)
    check_settings(pop, maxiter, mutation, crossover, strategy)
    population = init.clone()
    fit, ok = objective(population, idx)
    best_x, best_f, solved = _best(population, fit, ok)
    gens = torch.zeros(n, dtype=torch.long, device=init.device)
    for g in range(1, maxiter + 1):
        act = (~solved).nonzero().flatten()
        if len(act) == 0:
            break
        p, f = population[act], fit[act]
        pick = lambda r, p=p: torch.gather(p, 1, r[..., None].expand(-1, -1, dim))
        if strategy == "rand1":
            r1, r2, r3 = distinct_others(rng, idx[act], pop, 3)
            base = pick(r1)
        else:
            r2, r3 = distinct_others(rng, idx[act], pop, 2)
            base = best_x[act][:, None, :].expand(-1, pop, -1)
        if isinstance(mutation, tuple):  # dither: one F per problem and generation
            scale = mutation[0] + (mutation[1] - mutation[0]) * rng.uniform(1, 1, idx=idx[act])
        else:
            scale = mutation
        trial = base + scale * (pick(r2) - pick(r3))
        if crossover < 1.0:
            cross = rng.uniform(pop, dim, idx=idx[act]) < crossover
            forced = rng.randint(dim, pop, idx=idx[act])  # at least one coordinate from the mutant
            cross |= torch.nn.functional.one_hot(forced, dim).bool()
            trial = torch.where(cross, trial, p)
        if repair is not None:
            trial = repair(trial, idx[act], rng)
        f_trial, ok_trial = objective(trial, idx[act])
        better = f_trial < f
        population[act] = torch.where(better[..., None], trial, p)
        fit[act] = torch.where(better, f_trial, f)
        bx, bf, bs = _best(trial, f_trial, ok_trial)
        # the best so far: a solving trial wins outright, else the lowest fitness
        take = bs | (bf < best_f[act])
        best_x[act] = torch.where(take[:, None], bx, best_x[act])
        best_f[act] = torch.where(take, bf, best_f[act])
        solved[act] = bs
        gens[act] = g
    return DEResult(best_x, best_f, solved, gens)


def _best(pop: torch.Tensor, fit: torch.Tensor, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per problem: the lowest-fitness solving candidate if any solves, else the lowest overall."""
    j_any = torch.where(ok, fit, torch.inf).argmin(1)
    j = torch.where(ok.any(1), j_any, fit.argmin(1))
    sel = torch.arange(len(pop), device=pop.device)
    return pop[sel, j], fit[sel, j], ok[sel, j]
