"""The typed result record: one per run, numbers stored as numbers.

Leaderboards are pure functions of these records; W&B is only an output.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class RunRecord:
    config_hash: str
    model: str
    dataset: str
    defense: str
    attack: str
    params: str  # human-readable attack hyperparameters, e.g. "norm=linf eps=8/255 steps=10"
    norm: str  # threat model: linf, l2, l0, patch, none
    eps: float  # budget in the units of norm (NaN when unbounded)
    targeted: bool
    n: int
    clean_acc: float
    robust_acc: float
    n_attacked: int
    success_rate: float
    success_ci_low: float
    success_ci_high: float
    mean_queries: float
    mean_linf: float
    mean_l2: float
    mean_l0: float
    mean_conf: float
    mean_true_conf: float
    seconds: float
    seed: int
    device: str
    timestamp: str
    fragility_version: str
    torch_version: str
    torchvision_version: str
    git_commit: str
    split: str = "test"  # which data split the numbers were scored on
    variant: str = "standard"  # e.g. "adaptive" for BPDA/EOT rows of a defense
    config_json: str = "{}"  # the resolved config that reproduces the run
    extra_json: str = "{}"  # attack-specific numbers and artifact paths
    status: str = "done"
    flags: str = ""  # gradient-masking checks that fired (benchmarks/checks.py), e.g. "zero_grad 64/64"
    weights_sha256: str = ""  # SHA-256 of the checkpoint file the weights came from ("" when unknown)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def sql_types(cls) -> dict[str, str]:
        out = {}
        for f in fields(cls):
            t = f.type if isinstance(f.type, str) else f.type.__name__
            out[f.name] = {"int": "INTEGER", "float": "REAL", "bool": "INTEGER"}.get(t, "TEXT")
        return out

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        for k, v in row.items():
            if isinstance(v, float) and math.isnan(v):
                row[k] = None
            elif isinstance(v, bool):
                row[k] = int(v)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunRecord:
        kw = {}
        types = cls.sql_types()
        for f in fields(cls):
            v = row.get(f.name, f.default)
            if types[f.name] == "REAL":
                v = math.nan if v is None else float(v)
            elif f.type in ("bool", bool):
                v = bool(v)
            elif types[f.name] == "INTEGER":
                v = int(v) if v is not None else 0
            kw[f.name] = v
        return cls(**kw)


SAMPLE_COLUMNS = {
    "i": "INTEGER",
    "sample_id": "INTEGER",
    "label": "INTEGER",
    "clean_pred": "INTEGER",
    "adv_pred": "INTEGER",
    "target": "INTEGER",
    "success": "INTEGER",
    "queries": "INTEGER",
    "pred_conf": "REAL",
    "true_conf": "REAL",
    "linf": "REAL",
    "l2": "REAL",
    "l0": "REAL",
    "extras": "TEXT",  # JSON of the attack's per-sample extras (e.g. which ensemble member broke it)
}
