"""Resuming an interrupted attack: the batches a run has finished, kept beside its results.

An AutoAttack or one-pixel run over a few hundred images takes minutes to hours on a CPU. The
runner attacks the correctly classified images batch by batch; after each batch but the last it
writes what those batches found (per-sample facts, perturbation norms, the example images: no
adversarial images beyond those) to ``runs/<config hash>/partial.pt``. A rerun of the same
configuration that finds the file, with the same key, starts after the last finished batch. Every
sample's random stream is its own (``fragility.rng``), so the resumed run's rows are the ones an
uninterrupted run would have written. The file goes once the record is stored.

The key covers what could make the saved batches another run's: the config hash (config, variant,
seed), the images attacked, the batch size, the model's weights, what the attack learned before
evaluation (a trained patch) and the versions of fragility, torch and the git commit. A file with
another key, or one that does not load, is set aside with a warning and the run starts from its
first batch. It is read with ``weights_only=True``: tensors, numbers, strings and containers only,
so a planted file runs no code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fragility.attacks.base import AttackResult
from fragility.models.checkpoint import state_sha256

log = logging.getLogger(__name__)
PARTIAL = "partial.pt"
# seconds of attacking between two saves: a save costs 10-40 ms (a 10,000-image dataset, measured
# with tests/test_resume.py's shapes), which a fast attack (FGSM, ~50 ms a batch) would feel after
# every batch; an interruption loses at most this much work plus the batch that was running
SAVE_EVERY_S = 5.0


def attack_state(attack) -> str:
    """A digest of what an attack learned before evaluation (``trains = True``: the patch), so that
    batches scored with one trained patch are never joined to batches scored with another."""
    if not getattr(attack, "trains", False):
        return ""
    h = hashlib.sha256()
    for name, value in sorted(vars(attack).items()):
        if torch.is_tensor(value):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_digest(model) -> str:
    """The checkpoint's SHA-256 where the model came from one, else a digest of its parameters and
    buffers (a digits CNN retrained after its cache was cleared, a torchvision model's weights)."""
    return str(getattr(model, "weights_sha256", "") or "") or state_sha256(model)


def partial_key(config_hash: str, attacked: torch.Tensor, batch_size: int, weights: str, versions: dict, state: str = "") -> str:
    facts = {
        "attack_state": state,
        "config_hash": config_hash,
        "attacked": hashlib.sha256(attacked.to(torch.int64).numpy().tobytes()).hexdigest(),
        "n": len(attacked),
        "batch_size": batch_size,
        "weights": weights,
        "versions": versions,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def rng_state(model) -> dict[str, Any]:
    """The random state that a batch's draws depend on beyond the attack's per-image streams:
    torch's global generators (dropout, a model's own noise, the fooling attack's jitter) and the
    own stream of every defense in ``model`` (``DefendedClassifier``; an empty tensor where a
    defense has not drawn yet)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if cuda else [],
        "defenses": [s if (s := m.rng_state()) is not None else torch.empty(0, dtype=torch.uint8) for m in _defended(model)],
    }


def start_streams(model, config_hash: str) -> None:
    """Seed what :func:`rng_state` covers from the run's own key before its first batch, so that a
    run draws the same whether it follows another in one process (the adaptive variant after the
    standard one, an escalation after its flagged row) or runs alone on a rerun that finds the
    others stored. A resumed run then puts back the state saved with its batches."""
    stream = int(config_hash[:15], 16)
    torch.manual_seed(stream)
    for m in _defended(model):
        m.reseed(stream)


def set_rng_state(model, state: dict[str, Any] | None, device: torch.device) -> None:
    """Put back what :func:`rng_state` saved (nothing for a file without it)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for m, s in zip(_defended(model), state["defenses"], strict=False):
        if s.numel():
            m.set_rng_state(s, device)


def _defended(model) -> list:
    from fragility.defenses.base import DefendedClassifier

    return [m for m in model.modules() if isinstance(m, DefendedClassifier)]


class PartialRun:
    """The finished batches of one run at ``path``, valid for ``key`` only."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = Path(path), key
        self._warned = False
        self._last = time.perf_counter()

    def due(self) -> bool:
        """Whether :data:`SAVE_EVERY_S` seconds have passed since the last save (or the start)."""
        return time.perf_counter() - self._last >= SAVE_EVERY_S

    def load(self) -> dict[str, Any] | None:
        """``{"done", "parts", "norms", "examples", "seconds", "rng"}`` of the earlier attempt, or None."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("key") != self.key:
                why = "it belongs to another run (other images, batch size, weights or versions)"
                raise ValueError(why)
            parts = [AttackResult(**p) for p in state["parts"]]
            norms = {k: v.numpy().copy() for k, v in state["norms"].items()}
            done, seconds = int(state["done"]), float(state["seconds"])
            examples, rng = dict(state["examples"]), state.get("rng")
        except Exception as e:  # a stale, foreign or damaged file costs the restart only
            log.warning("starting from the first batch: %s is not used (%s)", self.path, str(e).splitlines()[0][:200])
            self.remove()
            return None
        return {"done": done, "parts": parts, "norms": norms, "examples": examples, "seconds": seconds, "rng": rng}

    def save(
        self,
        done: int,
        parts: list[AttackResult],
        norms: dict[str, np.ndarray],
        examples: dict,
        seconds: float,
        rng: dict | None = None,
    ) -> None:
        """Replace the file with the first ``done`` attacked images' results and the random state
        after them (:func:`rng_state`), atomically."""
        state = {
            "rng": rng,
            "key": self.key,
            "done": done,
            "parts": [{f.name: getattr(p, f.name) for f in fields(p)} for p in parts],
            "norms": {k: torch.from_numpy(v) for k, v in norms.items()},
            "examples": examples,
            "seconds": seconds,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, tmp)
            os.replace(tmp, self.path)
            self._last = time.perf_counter()
        except OSError as e:  # a full disk or read-only folder costs resumability, not the run
            if not self._warned:
                log.warning("cannot keep finished batches in %s (%s); an interrupted run will start over", self.path, e)
                self._warned = True

    def remove(self) -> None:
        for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
