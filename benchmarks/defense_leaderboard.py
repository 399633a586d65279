"""The defense leaderboard: one row per (model, dataset, defense), a pure function of the records.

Columns: clean accuracy; robust accuracy for every attack and budget that was run, once per
variant (``standard`` = the gradients the defense exposes, ``adaptive`` = BPDA / EOT); the worst
case per threat model (norm and budget) over attacks and variants, which is the robustness the
defense may claim (Athalye et al. 2018); and, for certifying defenses (randomized smoothing),
certified accuracy at each radius and the abstain rate. Written next to the attack leaderboard as
``defense_leaderboard.csv/.md/.html`` and, when a W&B run is open, as a W&B Table.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from fragility.benchmarks.leaderboard import _atomic_write, _fmt, html_page
from fragility.benchmarks.record import RunRecord
from fragility.budget import format_number

KEYS = ["model", "dataset", "defense"]


def _threat(r: RunRecord) -> str:
    return str(r.norm) if isinstance(r.eps, float) and math.isnan(r.eps) else f"{r.norm} {format_number(r.eps)}"


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
        wcol = f"worst {_threat(r)}"
        if r.robust_acc < row.get(wcol, math.inf):
            row[wcol] = r.robust_acc
            row[f"{wcol} by"] = r.attack + ("" if r.variant == "standard" else f" [{r.variant}]")
        for k, v in _extra(r).items():
            if k.startswith("certified_acc@") or k == "abstain_rate":
                row[k] = v
    if not rows:
        return pd.DataFrame(columns=[*KEYS, "n", "clean_acc"])
    df = pd.DataFrame(list(rows.values()))
    worst = sorted(c for c in df.columns if c.startswith("worst ") and not c.endswith(" by"))
    cert = sorted((c for c in df.columns if c.startswith("certified_acc@")), key=lambda c: float(c.split("@")[1]))
    extra = cert + (["abstain_rate"] if "abstain_rate" in df.columns else [])
    ordered = [*KEYS, "n", "clean_acc"] + [c for w in worst for c in (w, f"{w} by")] + extra + robust_cols
    df = df[ordered]
    sort = [*KEYS[:2]] + (worst[:1] if worst else [])
    return df.sort_values(sort, kind="stable", na_position="last").reset_index(drop=True)


def render_markdown(board: pd.DataFrame) -> str:
    md = "# fragility defense leaderboard\n\n"
    md += "Robust accuracy per attack; `[adaptive]` columns use BPDA / EOT. A defense's claim is its `worst` column.\n\n"
    return md + (_fmt(board).to_markdown(index=False) if len(board) else "(no runs yet)") + "\n"


def render_html(board: pd.DataFrame) -> str:
    body = _fmt(board).to_html(index=False, escape=True) if len(board) else "<p>(no runs yet)</p>"
    note = html.escape("[adaptive] columns: BPDA / EOT. The worst column is what a defense may claim.")
    return html_page("fragility defense leaderboard", f"<p>{note}</p>{body}", left_cols=3)


def write_defense_leaderboard(records: list[RunRecord], out_dir: str | Path) -> pd.DataFrame:
    """Write defense_leaderboard.csv/.md/.html into ``out_dir``; return the board."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    board = defense_leaderboard(records)
    _atomic_write(out / "defense_leaderboard.csv", board.to_csv(index=False))
    _atomic_write(out / "defense_leaderboard.md", render_markdown(board))
    _atomic_write(out / "defense_leaderboard.html", render_html(board))
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
