"""Leaderboards: pure functions of the stored records, rendered as CSV, Markdown and HTML.

The attack leaderboard ranks rows within a model (and dataset and defense) by robust accuracy,
lowest first, so the strongest attack is on top. The summary gives, per model and threat model
(norm, budget), the worst-case robust accuracy over all attacks at that budget, the way
RobustBench reports it.

The defense leaderboard has one row per (model, dataset, defense). Columns: clean accuracy;
robust accuracy for every attack and budget that was run, once per variant (``standard`` = the
gradients the defense exposes, ``adaptive`` = BPDA / EOT); the worst case per threat model over
attacks and variants, which is the robustness the defense may claim (Athalye et al. 2018); and,
for certifying defenses (randomized smoothing), certified accuracy at each radius and the abstain
rate. It is also logged as a W&B Table when a W&B run is open.

Threat models read as a person writes them (``linf 8/255``, ``l0 k=1``, ``patch 4x4``, ``frame width
2``: :func:`fragility.benchmarks.page.threat_label`). A run whose answer is complete for its threat
model (the exhaustive one-pixel check, ``sparse_rs exhaustive=true``) has ``complete`` True in
``leaderboard.csv`` and is marked in the Markdown, terminal and HTML boards: its robust accuracy is
exact for that threat model, not an upper bound (:func:`fragility.benchmarks.page.is_complete`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from fragility.benchmarks import page
from fragility.benchmarks.record import RunRecord
from fragility.benchmarks.worst_case import worst_case

COLUMNS = [
    "model",
    "dataset",
    "defense",
    "attack",
    "variant",
    "params",
    "split",
    "n",
    "clean_acc",
    "robust_acc",
    "complete",
    "success_rate",
    "success_ci_low",
    "success_ci_high",
    "mean_queries",
    "mean_linf",
    "mean_l2",
    "mean_l0",
    "seconds",
    "seed",
    "flags",
    "config_hash",
]


def board_row(r: RunRecord) -> dict:
    """One record as a leaderboard row (the :data:`COLUMNS`): its fields, and ``complete``
    derived from its stored attack params (:func:`fragility.benchmarks.page.is_complete`)."""
    return {c: page.is_complete(r) if c == "complete" else getattr(r, c) for c in COLUMNS}


def leaderboard(records: list[RunRecord]) -> pd.DataFrame:
    df = pd.DataFrame([board_row(r) for r in records], columns=COLUMNS)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    df = df.sort_values(["model", "dataset", "defense", "robust_acc", "attack"], kind="stable")
    return df.reset_index(drop=True)


def summary(records: list[RunRecord], samples: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Worst case per (model, weights, dataset, data, defense, threat, seed, n) over attacks and
    variants, counted per sample when ``samples`` (``{config_hash: per-sample frame}``, e.g.
    :func:`fragility.benchmarks.worst_case.samples_for`) holds every record's facts: an image is
    robust only if it survives every attack. Else the lowest aggregate. See
    :func:`fragility.benchmarks.worst_case.worst_case` for the columns."""
    return worst_case(records, samples)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; a leaderboard is made to be read (and published)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers to 4 significant digits; the ``complete`` flag as ``yes`` where set, the column left
    out when no row has it (``leaderboard.csv`` always keeps it, True / False)."""
    out = df.copy()
    if "complete" in out.columns:
        if out["complete"].astype(bool).any():
            out["complete"] = out["complete"].map(lambda v: "yes" if v else "")
        else:
            out = out.drop(columns="complete")
    for c in out.columns:
        if out[c].dtype.kind == "f":
            out[c] = out[c].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    return out


def _complete_note(board: pd.DataFrame) -> str:
    """The footnote under a board with complete rows (empty otherwise)."""
    if "complete" in board.columns and board["complete"].astype(bool).any():
        return f"complete = yes: {page.COMPLETE_NOTE}."
    return ""


def write_leaderboards(
    records: list[RunRecord], out_dir: str | Path, samples: Mapping[str, pd.DataFrame] | None = None
) -> pd.DataFrame:
    """Write leaderboard.csv/.md/.html and summary.csv into ``out_dir``; return the board.
    ``samples``: per-sample facts for the per-sample worst case (:func:`summary`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    board, summ = leaderboard(records), summary(records, samples)
    _atomic_write(out / "leaderboard.csv", board.to_csv(index=False))
    _atomic_write(out / "summary.csv", summ.to_csv(index=False))
    md = "# fragility leaderboard\n\n## Worst case per model and budget\n\n"
    md += (_fmt(summ).to_markdown(index=False) if len(summ) else "(no runs yet)") + "\n\n## All runs\n\n"
    md += (_fmt(board).to_markdown(index=False) if len(board) else "(no runs yet)") + "\n"
    if note := _complete_note(board):
        md += f"\n{note}\n"
    _atomic_write(out / "leaderboard.md", md)
    page.write_pages(records, board, summ, out, _atomic_write)  # leaderboard.html, models/*.html, exports/*.json
    write_defense_leaderboard(records, out)  # defense_leaderboard.csv/.md/.html
    return board


def terminal_table(records: list[RunRecord]) -> str:
    board = leaderboard(records)
    if board.empty:
        return "(no runs yet)"
    cols = [
        "model",
        "dataset",
        "defense",
        "attack",
        "params",
        "n",
        "clean_acc",
        "robust_acc",
        "complete",
        "success_rate",
        "mean_queries",
        "seconds",
        "flags",
    ]
    table = _fmt(board[cols]).to_string(index=False)
    note = _complete_note(board)
    return f"{table}\n{note}" if note else table


# ---- the defense leaderboard -------------------------------------------------------------------
KEYS = ["model", "dataset", "defense"]


def _extra(r: RunRecord) -> dict:
    try:
        return json.loads(r.extra_json or "{}")
    except json.JSONDecodeError:
        return {}


def defense_leaderboard(records: list[RunRecord]) -> pd.DataFrame:
    """Wide table, rows sorted by model then worst-case robust accuracy (most robust last)."""
    rows: dict[tuple, dict] = {}
    robust_cols: list[str] = []
    for r in sorted(records, key=lambda r: (r.attack, r.params, r.variant != "standard")):
        key = (r.model, r.dataset, r.defense)
        row = rows.setdefault(
            key, {"model": r.model, "dataset": r.dataset, "defense": r.defense, "n": r.n, "clean_acc": r.clean_acc}
        )
        if r.variant == "standard" or math.isnan(row["clean_acc"]):
            row["clean_acc"] = r.clean_acc
        col = f"{r.attack} {r.params}" + ("" if r.variant == "standard" else f" [{r.variant}]")
        if col not in robust_cols:
            robust_cols.append(col)
        row[col] = min(row.get(col, math.inf), r.robust_acc)
        wcol = f"worst {page.threat_of(r)}"
        if r.robust_acc < row.get(wcol, math.inf):
            row[wcol] = r.robust_acc
            row[f"{wcol} by"] = r.attack + ("" if r.variant == "standard" else f" [{r.variant}]")
        for k, v in _extra(r).items():
            if k.startswith("certified_acc@") or k == "abstain_rate":
                row[k] = v
        if r.flags:  # masking checks that fired on any of the row's runs
            row["flags"] = "; ".join(sorted(set(filter(None, row.get("flags", "").split("; "))) | {r.flags}))
    if not rows:
        return pd.DataFrame(columns=[*KEYS, "n", "clean_acc"])
    df = pd.DataFrame(list(rows.values()))
    worst = sorted(c for c in df.columns if c.startswith("worst ") and not c.endswith(" by"))
    cert = sorted((c for c in df.columns if c.startswith("certified_acc@")), key=lambda c: float(c.split("@")[1]))
    extra = cert + (["abstain_rate"] if "abstain_rate" in df.columns else []) + (["flags"] if "flags" in df.columns else [])
    ordered = [*KEYS, "n", "clean_acc"] + [c for w in worst for c in (w, f"{w} by")] + extra + robust_cols
    df = df[ordered]
    sort = [*KEYS[:2]] + (worst[:1] if worst else [])
    return df.sort_values(sort, kind="stable", na_position="last").reset_index(drop=True)


def render_defense_markdown(board: pd.DataFrame) -> str:
    md = "# fragility defense leaderboard\n\n"
    md += "Robust accuracy per attack; `[adaptive]` columns use BPDA / EOT. A defense's claim is its `worst` column.\n\n"
    return md + (_fmt(board).to_markdown(index=False) if len(board) else "(no runs yet)") + "\n"


def write_defense_leaderboard(records: list[RunRecord], out_dir: str | Path) -> pd.DataFrame:
    """Write defense_leaderboard.csv/.md/.html into ``out_dir``; return the board."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    board = defense_leaderboard(records)
    _atomic_write(out / "defense_leaderboard.csv", board.to_csv(index=False))
    _atomic_write(out / "defense_leaderboard.md", render_defense_markdown(board))
    _atomic_write(out / "defense_leaderboard.html", page.render_defense_page(board))
    return board


def log_wandb_table(logger, board: pd.DataFrame) -> None:
    """Add the board as a W&B Table to the logger's open run (no-op without one; never raises)."""
    run = getattr(logger, "run", None)
    if run is None or board.empty:
        return

    def _log():
        import wandb

        frame = board.astype(object).where(board.notna(), None)
        run.log({"defense_leaderboard": wandb.Table(columns=[str(c) for c in frame.columns], data=frame.values.tolist())})

    guard = getattr(logger, "_guard", None)
    if guard is not None:
        guard("defense table", _log)
