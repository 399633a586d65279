"""One factory for the :class:`RunRecord` rows the tests make by hand (no model runs).

``make_run_record(**fields)`` fills every required field with a neutral default; a test passes only
the values it cares about. Tests import it by plain name, like ``conftest``:
``from records import make_run_record``.
"""

from __future__ import annotations

from typing import Any

from fragility.benchmarks.record import RunRecord

# Neutral values, none of them special, grouped by what they describe.
RUN = dict(config_hash="0" * 16, model="m", dataset="d", defense="none", attack="pgd", params="", seed=0)
THREAT = dict(norm="linf", eps=0.1, targeted=False)
SCORES = dict(n=10, clean_acc=0.9, robust_acc=0.5, n_attacked=9, success_rate=0.5, success_ci_low=0.0, success_ci_high=1.0)
MEANS = dict(mean_queries=1.0, mean_linf=0.1, mean_l2=1.0, mean_l0=1.0, mean_conf=0.8, mean_true_conf=0.2)
HOST = dict(seconds=1.0, device="cpu", timestamp="2026-01-01T00:00:00+00:00")
VERSIONS = dict(fragility_version="0.1.0", torch_version="2.x", torchvision_version="0.x", git_commit="abc")
DEFAULTS: dict[str, Any] = RUN | THREAT | SCORES | MEANS | HOST | VERSIONS


def make_run_record(**fields: Any) -> RunRecord:
    """A full record: :data:`DEFAULTS` for every required field, ``fields`` over them (any field,
    the optional ones such as ``variant`` or ``flags`` included)."""
    return RunRecord(**(DEFAULTS | fields))
