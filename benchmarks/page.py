"""The leaderboard as a page people read and publish: ``leaderboard.html``, a page per model and
JSON exports, all pure functions of the stored records and the boards of :mod:`.leaderboard`.

- Cells are readable: percentages with one decimal and the Wilson 95% interval in the same cell
  (``47.0% [37.5, 56.7]``); friendly headers carry the raw column name as a tooltip; columns are
  grouped identity | clean | robust | cost | provenance | pictures. Columns this module does not
  know (a board may grow some) are rendered generically, never dropped.
- Tables sort (click a header) and filter (model, dataset, defense, threat model; one tab per
  threat model) with a small inline script: nothing is fetched, so the page works offline from a
  file. Pictures are inline PNGs (robust accuracy vs budget with CI bands) or coloured tables (an
  attack x model heatmap); each run's own pictures are thumbnails linking to the files in its run
  folder, so the page is one file plus its run folders.
- ``models/<model>.html``: every run of a model with its provenance (config, checkpoint hash,
  versions, seed, flags, and the command that reruns it).
- ``exports/<model>__<dataset>__<defense>__<threat>.json``: one RobustBench-like record per model
  and threat model, numbers as numbers (percent, like RobustBench).

Every string that comes from a user (names, params, flags, file names, config values) goes
through :func:`html.escape`; tables are built here rather than with ``DataFrame.to_html``.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import numbers
import re
import shlex
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from fragility.benchmarks.checks import parse_flags
from fragility.benchmarks.inputs import data_digest
from fragility.benchmarks.provenance import NON_SEMANTIC_KEYS
from fragility.benchmarks.record import RunRecord
from fragility.budget import format_number
from fragility.stats import wilson_interval

SCHEMA = "fragility-leaderboard/1"
CI_OF = {"success_rate": ("success_ci_low", "success_ci_high"), "worst_robust_acc": ("robust_ci_low", "robust_ci_high")}
WRAP = {"params", "flags", "worst_attack", "pictures"}  # long text columns that may wrap
GROUPS = ["identity", "clean", "robust", "cost", "provenance", "pictures", "other"]

# raw column -> (friendly header, group, kind). kind: text | pct | int | num | sec | bool | sha | hash | ci (folded into
# pct) | mark (a flag shown only where true; the column is left out when no row has it)
KNOWN: dict[str, tuple[str, str, str]] = {
    "model": ("Model", "identity", "text"),
    "dataset": ("Dataset", "identity", "text"),
    "defense": ("Defense", "identity", "text"),
    "threat": ("Threat model", "identity", "text"),
    "attack": ("Attack", "identity", "text"),
    "variant": ("Variant", "identity", "text"),
    "params": ("Attack parameters", "identity", "text"),
    "split": ("Scored on", "identity", "text"),
    "flags": ("Flags", "identity", "text"),
    "n": ("Images", "clean", "int"),
    "clean_acc": ("Clean accuracy", "clean", "pct"),
    "robust_acc": ("Robust accuracy", "robust", "pct"),
    "complete": ("Complete", "robust", "mark"),
    "worst_robust_acc": ("Robust accuracy (worst case)", "robust", "pct"),
    "worst_attack": ("Strongest attack", "robust", "text"),
    "n_attacks": ("Attacks run", "robust", "int"),
    "success_rate": ("Attack success", "robust", "pct"),
    "robust_ci_low": ("", "robust", "ci"),
    "robust_ci_high": ("", "robust", "ci"),
    "min_single_attack": ("Lowest single attack", "robust", "pct"),
    "per_sample": ("Per-sample worst case", "robust", "bool"),
    "success_ci_low": ("", "robust", "ci"),
    "success_ci_high": ("", "robust", "ci"),
    "abstain_rate": ("Abstains", "robust", "pct"),
    "mean_queries": ("Queries / image", "cost", "num"),
    "mean_linf": ("Mean L∞", "cost", "num"),
    "mean_l2": ("Mean L2", "cost", "num"),
    "mean_l0": ("Mean L0", "cost", "num"),
    "seconds": ("Attack time", "cost", "sec"),
    "seed": ("Seed", "provenance", "int"),
    "weights_sha256": ("Weights", "provenance", "sha"),
    "data_sha256": ("Data", "provenance", "sha"),
    "config_hash": ("Run", "provenance", "hash"),
}

_STYLE = """
:root{--id:#eef3fb;--clean:#eef8ee;--robust:#fbf0ee;--cost:#f6f1fb;--prov:#f3f3f3}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;padding:1.2em 2em;max-width:1400px;color:#1d2330}
h1{margin:.2em 0 .1em;font-size:1.6em}h2{margin:1.6em 0 .4em;font-size:1.2em;border-bottom:1px solid #dde;padding-bottom:.2em}
.lede{color:#556;margin:.2em 0 1em}
nav.filters{position:sticky;top:0;background:#fff;z-index:2;padding:.5em 0;border-bottom:1px solid #e4e6ee;display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:center}
nav.filters label{font-size:13px;color:#445}nav.filters select{font:inherit;font-size:13px;max-width:16em}
.tabs{display:flex;flex-wrap:wrap;gap:.3em;margin:.6em 0}
.tabs button{font:inherit;font-size:13px;border:1px solid #c9cfe0;background:#f7f8fc;border-radius:14px;padding:.15em .8em;cursor:pointer}
.tabs button[aria-selected=true]{background:#2a4d9b;color:#fff;border-color:#2a4d9b}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #d8dbe4;padding:3px 7px;vertical-align:top}
td{text-align:right;white-space:nowrap}td.t{text-align:left;white-space:nowrap}td.w{text-align:left;white-space:normal;min-width:10em;max-width:18em;overflow-wrap:break-word}
#runs .ci,#defenses .ci{display:block}#runs,#defenses{font-size:12px}#runs th,#runs td,#defenses th,#defenses td{padding:2px 4px}#defenses thead th{min-width:6em;white-space:normal}#runs td.w{min-width:8em;max-width:12em}
thead th{background:#f2f3f7;position:relative}thead tr.cols th{cursor:pointer;user-select:none}
thead tr.cols th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
thead tr.cols th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
th.g-identity{background:var(--id)}th.g-clean{background:var(--clean)}th.g-robust{background:var(--robust)}
th.g-cost{background:var(--cost)}th.g-provenance,th.g-pictures,th.g-other{background:var(--prov)}
td.g-robust{background:#fffafa}td.g-clean{background:#fbfefb}
caption{text-align:left;color:#556;padding:.2em 0;caption-side:top}
tbody tr:hover td{background:#fff8d6}
.ci{color:#778;font-size:12px}.muted{color:#889}.complete{color:#1d6b2f;font-weight:600;cursor:help}
img.pic{height:160px;margin:0 4px;border:1px solid #ccd}img.thumb{height:40px;margin:0 2px;border:1px solid #ccd;image-rendering:pixelated;vertical-align:middle}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs figure{margin:0}.figs img{max-width:100%}
figcaption{font-size:12px;color:#556;max-width:560px}
table.heat td{min-width:5.5em;text-align:center}table.heat th{text-align:left}
pre{background:#f6f7fa;border:1px solid #e0e3ea;padding:.6em;overflow-x:auto;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:.15em 1em;font-size:13px}dl.prov dt{color:#556}dl.prov dd{margin:0}
section.run{border-top:1px solid #dde;margin-top:1em}
"""

# Sorting and filtering in ~40 lines: what a table library would give us, without fetching one.
_SCRIPT = """
(function () {
  "use strict";
  var state = {model: "", dataset: "", defense: "", threat: ""};
  function shown(el) {
    for (var k in state) {
      if (state[k] && el.hasAttribute("data-" + k) && el.getAttribute("data-" + k) !== state[k]) return false;
    }
    return true;
  }
  function apply() {
    document.querySelectorAll("[data-filtered]").forEach(function (el) { el.hidden = !shown(el); });
    document.querySelectorAll("table.board").forEach(function (t) {
      var rows = t.tBodies[0].rows, n = 0;
      for (var i = 0; i < rows.length; i++) { rows[i].hidden = !shown(rows[i]); if (!rows[i].hidden) n++; }
      var c = t.querySelector(".count");
      if (c) c.textContent = n + " of " + rows.length;
    });
    document.querySelectorAll(".tabs button").forEach(function (b) {
      b.setAttribute("aria-selected", String(b.getAttribute("data-value") === state.threat));
    });
    document.querySelectorAll("select[data-filter]").forEach(function (s) { s.value = state[s.getAttribute("data-filter")]; });
  }
  document.querySelectorAll("select[data-filter]").forEach(function (s) {
    s.addEventListener("change", function () { state[s.getAttribute("data-filter")] = s.value; apply(); });
  });
  document.querySelectorAll(".tabs button").forEach(function (b) {
    b.addEventListener("click", function () { state.threat = b.getAttribute("data-value"); apply(); });
  });
  function key(td) {  // numeric cells carry data-v; the rest sort by their text; empty cells last
    if (!td) return null;
    var v = td.getAttribute("data-v");
    if (v !== null) return parseFloat(v);
    var t = td.textContent.trim().toLowerCase();
    return t === "" ? null : t;
  }
  document.querySelectorAll("table.board thead tr.cols th").forEach(function (th) {
    th.addEventListener("click", function () {
      var t = th.closest("table"), col = th.cellIndex, body = t.tBodies[0];
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      t.querySelectorAll("thead tr.cols th").forEach(function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a.cells[col]), y = key(b.cells[col]);
        if (x === null || y === null) return (x === null) - (y === null);
        if (typeof x !== typeof y) return (typeof x === "number" ? -1 : 1) * dir;
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  apply();
})();
"""


# ---- small formatting helpers -------------------------------------------------------------------
def esc(v: object) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _isnan(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


# ---- threat models and complete runs: one definition, used by every rendering -------------------
#: sparse threat models (attacks/sparse_rs.py, onepixel), whose budget is a size in pixels
SPARSE_LABELS = {"l0": "l0 k={}", "l0_patch": "patch {0}x{0}", "l0_frame": "frame width {}"}
#: the x axis of a budget curve per norm (the norm itself when it is not listed)
AXIS_LABELS = {"l0": "pixels changed, k", "l0_patch": "patch side, pixels", "l0_frame": "frame width, pixels"}
#: what a row marked complete means (the marker's tooltip, the boards' footnotes, the page's lede)
COMPLETE_NOTE = (
    "every position x every corner colour of one pixel was tried (sparse_rs exhaustive=true, k=1), "
    "so its robust accuracy is exact for that threat model, not an upper bound"
)


def threat_label(norm: str, eps: float) -> str:
    """The threat model as a person writes it: ``linf 8/255``, ``l2 0.5``; the sparse ones by
    their size in pixels: ``l0 k=1``, ``patch 4x4``, ``frame width 2``; the norm alone when
    unbounded. Every board's threat column (summary(), the defense board's ``worst`` columns, the
    page's tabs and filters, the exports) is this string."""
    if _isnan(eps):
        return str(norm)
    fmt = SPARSE_LABELS.get(str(norm))
    return fmt.format(format_number(eps)) if fmt else f"{norm} {format_number(eps)}"


def threat_of(r: RunRecord) -> str:
    """:func:`threat_label` of a record."""
    return threat_label(r.norm, r.eps)


def attack_params(r: RunRecord) -> dict[str, str]:
    """The record's attack parameters, ``{key: text}``, read from its ``params`` (the attack's
    ``describe()``: ``key=value`` words, e.g. ``mode=pixels k=1 exhaustive=True``)."""
    out = {}
    for word in str(r.params or "").split():
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out


def is_complete(r: RunRecord) -> bool:
    """Whether the run's answer is complete for its threat model, its robust accuracy exact rather
    than an upper bound: a ``sparse_rs`` run with ``exhaustive=true`` (``mode=pixels``, ``k=1``),
    which tried every position x every corner colour, of a model whose output is not random (no
    ``random_output`` or ``random`` flag). Read from the stored params (its ``extra_json``
    ``"exhaustive"`` when the params lack the key)."""
    if r.attack != "sparse_rs":
        return False
    if {"random", "random_output"} & set(parse_flags(r.flags)):
        return False  # a random model: each candidate was asked of one draw, so no walk is complete
    params = attack_params(r)
    if "exhaustive" in params:
        return params["exhaustive"].lower() == "true"
    try:
        extra = json.loads(r.extra_json or "{}")
    except json.JSONDecodeError:
        return False
    return isinstance(extra, dict) and extra.get("exhaustive") is True


def complete_mark(v: object) -> str:
    """The HTML marker of a complete row (``v`` true), with :data:`COMPLETE_NOTE` as its tooltip."""
    return f'<span class="complete" title="complete: {esc(COMPLETE_NOTE)}">complete ✓</span>' if _true(v) else ""


def _true(v: object) -> bool:
    return isinstance(v, (bool, np.bool_)) and bool(v)


def pct(v: float, lo: float | None = None, hi: float | None = None) -> str:
    """``47.0% [37.5, 56.7]`` (HTML; the interval muted), or empty when missing."""
    if _isnan(v):
        return ""
    out = f"{100 * v:.1f}%"
    if lo is not None and hi is not None and not (_isnan(lo) or _isnan(hi)):
        out += f' <span class="ci">[{100 * lo:.1f}, {100 * hi:.1f}]</span>'
    return out


def acc_ci(acc: float, n: int) -> tuple[float, float]:
    """Wilson 95% interval of an accuracy measured on ``n`` images (NaN when unknown)."""
    if _isnan(acc) or not n:
        return (math.nan, math.nan)
    return wilson_interval(round(acc * n), int(n))


def slug(text: str) -> str:
    """A file-name-safe form of ``text``; a short hash is appended when characters were replaced,
    so two names never share a file."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "x"
    if s != text:
        import hashlib

        s += "-" + hashlib.sha256(str(text).encode()).hexdigest()[:6]
    return s


def href(path: str, fragment: str = "") -> str:
    """A relative link: the path URL-quoted (no scheme can survive), then HTML-escaped."""
    return esc(quote(str(path), safe="/") + (f"#{quote(fragment, safe='')}" if fragment else ""))


def _number(v: float, kind: str) -> str:
    if _isnan(v):
        return ""
    if kind == "int":
        return f"{int(v)}"
    if kind == "sec":
        return f"{v:.1f} s" if v < 100 else f"{v / 60:.1f} min"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


# ---- tables ---------------------------------------------------------------------------------------
@dataclass
class Column:
    key: str
    header: str
    group: str
    tip: str


@dataclass
class Row:
    cells: list[tuple[str, object]]  # (inner HTML, sort value or None)
    attrs: dict[str, str]


def _group_of(name: str) -> str:
    if name.startswith(("worst", "certified", "robust")) or " " in name:
        return "robust"
    return "other"


def _friendly(name: str) -> str:
    if name.startswith("worst "):
        return f"Worst case, {name[6:]}"
    if name.startswith("certified_acc@"):
        return f"Certified at radius {name.split('@', 1)[1]}"
    return name.replace("_", " ")


def _empty(s: pd.Series) -> bool:
    return bool(s.map(lambda v: _isnan(v) or v == "").all())


def columns_for(df: pd.DataFrame) -> list[Column]:
    """Columns of ``df`` in group order (identity | clean | robust | cost | provenance | other),
    CI columns folded into their value's cell; columns empty in every row are left out (the CSV
    keeps them)."""
    cols = []
    for c in df.columns:
        header, group, kind = KNOWN.get(c, (_friendly(c), _group_of(c), ""))
        if len(df) and (_empty(df[c]) or (kind == "mark" and not df[c].map(_true).any())):
            continue
        if kind == "ci" or c.endswith(" by"):
            continue
        cols.append(Column(c, header, group, c))
    return sorted(cols, key=lambda col: GROUPS.index(col.group))


def cell(df_row: pd.Series, c: str, n: int | None = None) -> tuple[str, object]:
    """(HTML, sort value) for one cell. Percent columns get the interval when it is known."""
    v = df_row.get(c)
    kind = KNOWN.get(c, ("", "", ""))[2]
    if kind == "" and isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)):
        frac = any(w in c for w in ("acc", "rate")) or c.startswith(("worst ", "robust", "clean")) or " " in c
        kind = "pct" if frac and (_isnan(v) or 0 <= v <= 1) else "num"
    if kind == "pct":
        if c in CI_OF and all(k in df_row.index for k in CI_OF[c]):
            lo, hi = (df_row.get(k) for k in CI_OF[c])
        else:
            lo, hi = acc_ci(v, n) if n else (None, None)
        out = pct(v, lo, hi)
        by = df_row.get(f"{c} by")
        if out and isinstance(by, str) and by:
            out += f' <span class="ci">{esc(by)}</span>'
        return out, (None if _isnan(v) else float(v))
    if kind in ("int", "num", "sec"):
        return (_number(v, kind), None if _isnan(v) else float(v))
    if kind == "bool":
        return ("" if _isnan(v) else ("yes" if v else "no"), None)
    if kind == "mark":
        return (complete_mark(v), None)
    if kind == "sha":
        text = "" if _isnan(v) else str(v)
        return (f'<span title="{esc(text)}">{esc(text[:12])}</span>' if text else "", None)
    return (esc("" if _isnan(v) else v), None)


def render_table(tid: str, caption: str, cols: list[Column], rows: list[Row]) -> str:
    """A sortable, filterable table: a row of column groups over a row of friendly headers."""
    groups: list[list] = []
    for c in cols:
        if groups and groups[-1][0] == c.group:
            groups[-1][1] += 1
        else:
            groups.append([c.group, 1])
    head = "".join(f'<th colspan="{k}" class="g-{g}" scope="colgroup">{esc(g)}</th>' for g, k in groups)
    names = "".join(f'<th class="g-{c.group}" title="{esc(c.tip)}" scope="col">{esc(c.header)}</th>' for c in cols)
    body = []
    for r in rows:
        attrs = "".join(f' data-{k}="{esc(v)}"' for k, v in r.attrs.items())
        tds = []
        for c, (inner, sortv) in zip(cols, r.cells):
            cls = ("w" if c.key in WRAP else "t") if sortv is None else f"g-{c.group}"
            sv = "" if sortv is None else f' data-v="{sortv!r}"'
            tds.append(f'<td class="{cls}"{sv}>{inner}</td>')
        body.append(f"<tr{attrs}>{''.join(tds)}</tr>")
    cap = f'<caption>{esc(caption)} (<span class="count">{len(rows)} of {len(rows)}</span> rows)</caption>'
    return (
        f'<div class="scroll"><table class="board" id="{esc(tid)}">{cap}<thead><tr class="groups">{head}</tr>'
        f'<tr class="cols">{names}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def board_rows(
    df: pd.DataFrame, cols: list[Column], attrs: Callable[[pd.Series], dict[str, str]], n_of: Callable[[pd.Series], int | None]
) -> list[Row]:
    rows = []
    for _, r in df.iterrows():
        n = n_of(r)
        rows.append(Row([cell(r, c.key, n) for c in cols], attrs(r)))
    return rows


# ---- pictures --------------------------------------------------------------------------------------
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=96)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _entity(records: list[RunRecord]) -> Callable[[RunRecord], str]:
    """What a line or heatmap column stands for: the model, the defense (one model), or both."""
    models = {r.model for r in records}
    defenses = {r.defense for r in records}
    if len(models) == 1 and len(defenses) > 1:
        return lambda r: r.defense
    if len(defenses) == 1:
        return lambda r: r.model
    return lambda r: f"{r.model} + {r.defense}"


def _curve_points(records: list[RunRecord], summ: pd.DataFrame) -> list[dict]:
    """Worst-case points (dataset, norm, eps, model, defense, acc, lo, hi, clean, n): the summary's
    rows when it has them (its worst case may be per sample), else the lowest record."""
    budget = {threat_of(r): (r.norm, r.eps) for r in records if not _isnan(r.eps)}
    pts = []
    if {"model", "dataset", "defense", "threat", "worst_robust_acc"} <= set(summ.columns):
        for _, row in summ.iterrows():
            if str(row["threat"]) not in budget or _isnan(row["worst_robust_acc"]):
                continue
            norm, eps = budget[str(row["threat"])]
            n = int(row["n"]) if "n" in row.index and not _isnan(row["n"]) else 0
            acc = float(row["worst_robust_acc"])
            lo, hi = (row.get("robust_ci_low"), row.get("robust_ci_high"))
            if _isnan(lo) or _isnan(hi):
                lo, hi = acc_ci(acc, n)
            pts.append(
                dict(
                    dataset=row["dataset"],
                    norm=norm,
                    eps=eps,
                    model=row["model"],
                    defense=row["defense"],
                    acc=acc,
                    lo=lo,
                    hi=hi,
                    clean=row.get("clean_acc", math.nan),
                    n=n,
                )
            )
        return pts
    for r in records:
        if not _isnan(r.eps) and not _isnan(r.robust_acc):
            lo, hi = acc_ci(r.robust_acc, r.n)
            pts.append(
                dict(
                    dataset=r.dataset,
                    norm=r.norm,
                    eps=r.eps,
                    model=r.model,
                    defense=r.defense,
                    acc=r.robust_acc,
                    lo=lo,
                    hi=hi,
                    clean=r.clean_acc,
                    n=r.n,
                )
            )
    return pts


def budget_curves(records: list[RunRecord], summ: pd.DataFrame) -> list[str]:
    """One PNG per (dataset, norm): worst-case robust accuracy vs budget, one line per model (or
    per defense when there is one model), Wilson 95% bands; budget 0 is the clean accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for p in _curve_points(records, summ):
        by[(p["dataset"], p["norm"])].append(p)
    for (dataset, norm), pts in sorted(by.items()):
        models, defenses = {p["model"] for p in pts}, {p["defense"] for p in pts}
        ent = (
            (lambda p: p["defense"])
            if len(models) == 1 and len(defenses) > 1
            else ((lambda p: p["model"]) if len(defenses) == 1 else (lambda p: f"{p['model']} + {p['defense']}"))
        )
        series: dict[str, dict[float, tuple[float, float, float]]] = defaultdict(dict)
        for p in pts:
            s = series[ent(p)]
            if p["eps"] not in s or p["acc"] < s[p["eps"]][0]:
                s[p["eps"]] = (p["acc"], p["lo"], p["hi"])
            if not _isnan(p["clean"]):
                s.setdefault(0.0, (p["clean"], *acc_ci(p["clean"], p["n"])))
        fig, ax = plt.subplots(figsize=(5.6, 3.4))
        for name in sorted(series):
            xs = sorted(series[name])
            ys, los, his = ([100 * series[name][x][i] for x in xs] for i in range(3))
            (line,) = ax.plot(xs, ys, marker="o", ms=4, label=name)
            ax.fill_between(xs, los, his, color=line.get_color(), alpha=0.18, lw=0)
        ax.set_xlabel(f"budget ({AXIS_LABELS.get(str(norm), norm)})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(f"{dataset}: worst case over attacks", fontsize=10)
        ax.legend(fontsize=8, frameon=False)
        cap = (
            f"Robust accuracy vs budget ({AXIS_LABELS.get(str(norm), norm)}) on {dataset}: the worst case over every "
            "attack and variant at each budget (as in the table above), budget 0 = clean accuracy; bands: Wilson 95% "
            "intervals over the n images."
        )
        out.append(
            f'<figure data-filtered="" data-dataset="{esc(dataset)}"><img src="{_png(fig)}" width="538" height="326" '
            f'alt="{esc(cap)}"><figcaption>{esc(cap)}</figcaption></figure>'
        )
    return out


def _heat_colour(v: float) -> tuple[str, str]:
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["RdYlGn"](0.1 + 0.8 * v)
    light = 0.299 * r + 0.587 * g + 0.114 * b
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}", ("#000" if light > 0.5 else "#fff")


def heatmaps(records: list[RunRecord]) -> list[str]:
    """One coloured table per (dataset, threat model): attack (and variant) x model (or defense)."""
    out = []
    by: dict[tuple[str, str, float], list[RunRecord]] = defaultdict(list)
    for r in records:
        by[(r.dataset, r.norm, math.inf if _isnan(r.eps) else r.eps)].append(r)
    for (dataset, _, _), recs in sorted(by.items()):  # budgets in numeric order
        threat = threat_label(recs[0].norm, recs[0].eps)
        ent = _entity(recs)
        cols = sorted({ent(r) for r in recs})
        label = lambda r: r.attack + ("" if r.variant == "standard" else f" ({r.variant})")
        rows = sorted({label(r) for r in recs})
        val: dict[tuple[str, str], RunRecord] = {}
        for r in recs:
            k = (label(r), ent(r))
            if k not in val or r.robust_acc < val[k].robust_acc:
                val[k] = r
        head = "".join(f'<th scope="col">{esc(c)}</th>' for c in cols)
        body = []
        for a in rows:
            tds = []
            for c in cols:
                r = val.get((a, c))
                if r is None or _isnan(r.robust_acc):
                    tds.append('<td class="muted">–</td>')
                    continue
                bg, fg = _heat_colour(r.robust_acc)
                tip = f"{a} on {c}: robust accuracy {100 * r.robust_acc:.1f}% ({r.params}, n={r.n})"
                mark = " ✓" if is_complete(r) else ""  # an exact value, not an upper bound
                if mark:
                    tip += f"; complete: {COMPLETE_NOTE}"
                tds.append(f'<td style="background:{bg};color:{fg}" title="{esc(tip)}">{100 * r.robust_acc:.1f}%{mark}</td>')
            body.append(f'<tr><th scope="row">{esc(a)}</th>{"".join(tds)}</tr>')
        out.append(
            f'<figure data-filtered="" data-dataset="{esc(dataset)}" data-threat="{esc(threat)}"><table class="heat">'
            f"<caption>{esc(dataset)}, {esc(threat)}: robust accuracy</caption><thead><tr><th>attack</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></figure>"
        )
    return out


def figure_links(r: RunRecord, out_dir: Path) -> list[str]:
    """The run's pictures that exist on disk, as paths relative to ``out_dir``."""
    try:
        figs = json.loads(r.extra_json or "{}").get("figures", [])
    except json.JSONDecodeError:
        figs = []
    root = out_dir.resolve()
    ok = []
    for f in figs if isinstance(figs, list) else []:
        p = (out_dir / str(f)).resolve()
        if p.is_relative_to(root) and p.is_file():  # never link outside the results folder
            ok.append(str(f))
    return ok


def thumbs(paths: Iterable[str], prefix: str = "", cls: str = "thumb") -> str:
    return " ".join(
        f'<a href="{href(prefix + p)}" title="{esc(Path(p).name)}"><img class="{cls}" loading="lazy" '
        f'src="{href(prefix + p)}" alt="{esc(Path(p).stem)}"></a>'
        for p in paths
    )


# ---- provenance -----------------------------------------------------------------------------------
def _override_value(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, float) else str(v)  # 0.2, not 51/255: the value, not its spelling
    if isinstance(v, list):
        return "[" + ",".join(_override_value(x) for x in v) + "]"
    s = str(v)
    if re.fullmatch(r"[A-Za-z0-9_./:+@-]+", s):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


@functools.cache
def _conf_files(group: str) -> dict[str, dict]:
    """The package's conf/<group>/*.yaml as plain dicts (empty when the group is not a folder)."""
    import yaml

    import fragility.conf

    out = {}
    for root in fragility.conf.__path__:
        for f in sorted(Path(root, group).glob("*.yaml")):
            try:
                node = yaml.safe_load(f.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(node, dict):
                out[f.stem] = {k: v for k, v in node.items() if k != "defaults"}
    return out


@functools.cache
def _conf_top_keys() -> frozenset[str]:
    import yaml

    import fragility.conf

    keys: set[str] = set()
    for root in fragility.conf.__path__:
        f = Path(root, "config.yaml")
        if f.is_file():
            keys |= set(yaml.safe_load(f.read_text(encoding="utf-8")) or {})
    return frozenset(keys)


def _choice(group: str, node: object) -> tuple[str | None, set[str]]:
    """The config file of ``group`` closest to the resolved ``node`` (same ``_target_``, fewest
    differing values) and the keys of ``node`` that file lacks (they need Hydra's ``+``)."""
    if not isinstance(node, dict):
        return None, set()
    best, best_diff = None, math.inf
    for name, conf in _conf_files(group).items():
        if conf.get("_target_") != node.get("_target_"):
            continue
        diff = sum(conf.get(k, object()) != v for k, v in node.items()) + sum(k not in node for k in conf)
        if diff < best_diff:
            best, best_diff = name, diff
    if best is None:
        return None, set()
    return best, set(node) - set(_conf_files(group)[best])


def _leaves(prefix: str, node: dict) -> list[tuple[str, str]]:
    """(top-level key, ``a.b.c=value``) for every leaf under ``node`` except ``_target_``."""
    out = []
    for k, x in node.items():
        if k == "_target_":
            continue
        if isinstance(x, dict):
            out += [(k, a) for _, a in _leaves(f"{prefix}.{k}", x)]
        else:
            out.append((k, f"{prefix}.{k}={_override_value(x)}"))
    return out


def rerun_command(r: RunRecord, results_dir: str = "") -> str:
    """A shell command that reruns the record: group choices plus every resolved value."""
    try:
        cfg = json.loads(r.config_json or "{}")
    except json.JSONDecodeError:
        cfg = {}
    args: list[str] = []
    for key, v in cfg.items():
        if key in NON_SEMANTIC_KEYS or key == "inputs":  # inputs: the files' digests, not a setting
            continue
        if isinstance(v, dict):
            choice, extra = _choice(key, v)
            if choice:
                args.append(f"{key}={choice}")
            if choice != "none":
                args += [("+" if k in extra or not choice else "") + a for k, a in _leaves(key, v)]
        else:
            plus = "" if key in _conf_top_keys() else "+"
            args.append(f"{plus}{key}={_override_value(v)}")
    args += [f"results_dir={_override_value(results_dir or cfg.get('results_dir', 'results'))}", "logger=none", "force=true"]
    if _given(cfg):  # a network or images held in Python: the same call with the same objects
        rest = [a for a in args if (k := a.split("=", 1)[0].lstrip("+")) != "attack" and not k.startswith(("model", "dataset"))]
        attack = next((a.split("=", 1)[1] for a in args if a.startswith("attack=")), "")
        return f"evaluate(model, images, labels, {attack!r}, overrides={rest!r})  # fragility.benchmarks.evaluate"
    return "fragility " + " ".join(shlex.quote(a) for a in args)


def _given(cfg: dict) -> bool:
    """Whether the run scored a model or images handed over in Python (``model=given``)."""
    targets = {str((cfg.get(k) or {}).get("_target_", "")) for k in ("model", "dataset") if isinstance(cfg.get(k), dict)}
    return bool(targets & {"fragility.models.given.build", "fragility.datasets.given.Given"})


def provenance(r: RunRecord) -> dict[str, object]:
    """What reproduces a record; fields a store may not have yet read as empty."""
    return {
        "config_hash": r.config_hash,
        "seed": r.seed,
        "n": r.n,
        "device": r.device,
        "timestamp": r.timestamp,
        "fragility_version": r.fragility_version,
        "torch_version": r.torch_version,
        "torchvision_version": r.torchvision_version,
        "git_commit": r.git_commit,
        "weights_sha256": getattr(r, "weights_sha256", "") or "",
        "flags": getattr(r, "flags", "") or "",
    }


# ---- pages -----------------------------------------------------------------------------------------
def page(title: str, body: str, lede: str = "", script: bool = True) -> str:
    t = esc(title)
    js = f"<script>{_SCRIPT}</script>" if script else ""
    lede_html = f'<p class="lede">{lede}</p>' if lede else ""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, '
        f'initial-scale=1"><title>{t}</title><style>{_STYLE}</style></head><body><h1>{t}</h1>{lede_html}{body}{js}</body></html>\n'
    )


def _select(name: str, label: str, values: Iterable[str]) -> str:
    opts = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in sorted(set(values)))
    return f'<label>{esc(label)} <select data-filter="{name}"><option value="">all</option>{opts}</select></label>'


def filter_bar(values: dict[str, Iterable[str]]) -> str:
    labels = {"model": "Model", "dataset": "Dataset", "defense": "Defense", "threat": "Threat model"}
    return '<nav class="filters" aria-label="filters">' + "".join(_select(k, labels[k], v) for k, v in values.items()) + "</nav>"


def tabs(threats: Iterable[str]) -> str:
    buttons = ['<button type="button" role="tab" data-value="" aria-selected="true">all threat models</button>']
    buttons += [
        f'<button type="button" role="tab" data-value="{esc(t)}" aria-selected="false">{esc(t)}</button>' for t in threats
    ]
    return f'<div class="tabs" role="tablist" aria-label="threat models">{"".join(buttons)}</div>'


def _record_index(records: list[RunRecord]) -> dict[tuple[str, str], RunRecord]:
    return {(r.config_hash, r.variant): r for r in records}


def render_leaderboard(records: list[RunRecord], board: pd.DataFrame, summ: pd.DataFrame, out_dir: str | Path) -> str:
    """The main page: worst case per model and threat model, pictures, every run, defenses."""
    out = Path(out_dir)
    if not records:
        return page("fragility leaderboard", "<p>(no runs yet)</p>", script=False)
    index = _record_index(records)
    n_of_group: dict[tuple, int] = {}
    for r in records:
        k = (r.model, r.dataset, r.defense, threat_of(r))
        n_of_group[k] = max(n_of_group.get(k, 0), r.n)
    budgets = sorted({(r.norm, math.inf if _isnan(r.eps) else r.eps) for r in records})
    threats = list(dict.fromkeys(threat_label(norm, math.nan if eps == math.inf else eps) for norm, eps in budgets))
    bar = filter_bar(
        {
            "model": [r.model for r in records],
            "dataset": [r.dataset for r in records],
            "defense": [r.defense for r in records],
            "threat": threats,
        }
    )
    ident = lambda row: {k: str(row[k]) for k in ("model", "dataset", "defense", "threat") if k in row.index}

    # worst case per model and threat model (summary() as it is; whatever columns it has)
    s_cols = columns_for(summ)
    s_rows = board_rows(
        summ,
        s_cols,
        ident,
        lambda row: (
            int(row["n"])
            if "n" in row.index and not _isnan(row["n"])
            else n_of_group.get(tuple(str(row.get(k)) for k in ("model", "dataset", "defense", "threat")))
        ),
    )
    parts = [
        bar,
        tabs(threats),
        "<h2>Worst case per model and threat model</h2>",
        render_table("summary", "The lowest robust accuracy over every attack at each budget", s_cols, s_rows),
    ]
    curves, heats = budget_curves(records, summ), heatmaps(records)
    if curves:
        parts += ["<h2>Robust accuracy vs budget</h2>", f'<div class="figs">{"".join(curves)}</div>']
    if heats:
        parts += ["<h2>Robust accuracy per attack</h2>", f'<div class="figs">{"".join(heats)}</div>']

    # every run
    b = board.copy()
    b_cols = columns_for(b)
    b_cols.append(Column("pictures", "Pictures", "pictures", "pictures"))

    def run_attrs(row: pd.Series) -> dict[str, str]:
        r = index.get((row["config_hash"], row.get("variant", "standard")))
        a = {k: str(row[k]) for k in ("model", "dataset", "defense") if k in row.index}
        if r is not None:
            a["threat"] = threat_of(r)
        return a

    rows = []
    for _, row in b.iterrows():
        r = index.get((row["config_hash"], row.get("variant", "standard")))
        cells = []
        for c in b_cols:
            if c.key == "config_hash":
                link = href(f"models/{slug(row['model'])}.html", f"{row['config_hash']}-{row.get('variant', 'standard')}")
                cells.append((f'<a href="{link}">{esc(str(row[c.key])[:8])}</a>', None))
            elif c.key == "pictures":
                cells.append((thumbs(figure_links(r, out)) if r is not None else "", None))
            else:
                cells.append(cell(row, c.key, int(row["n"]) if "n" in row.index and not _isnan(row["n"]) else None))
        rows.append(Row(cells, run_attrs(row)))
    parts += [
        "<h2>All runs</h2>",
        render_table("runs", "Every run; within a model the strongest attack first", b_cols, rows),
    ]
    if any(r.defense != "none" for r in records):
        from fragility.benchmarks.leaderboard import defense_leaderboard  # the board is leaderboard.py's

        parts += ["<h2>Defenses</h2>", defense_section(defense_leaderboard(records))]
    models = sorted({r.model for r in records})
    parts.append("<h2>Models and exports</h2><ul>")
    for m in models:
        parts.append(f'<li><a href="{href(f"models/{slug(m)}.html")}">{esc(m)}</a>: provenance of every run</li>')
    names = sorted(export_records(records))
    parts.append(
        f"</ul><details><summary>JSON exports: {len(names)} files (RobustBench-like, one per model and threat model)</summary><ul>"
    )
    parts += [f'<li><a href="{href("exports/" + name)}">{esc(name)}</a></li>' for name in names]
    parts.append("</ul></details>")
    lede = (
        f"{len(records)} runs of {len(models)} model(s). Percentages with a Wilson 95% interval over the images scored. "
        "A robust accuracy is an upper bound: a stronger attack can only lower it. Click a header to sort."
    )
    if any(is_complete(r) for r in records):
        lede += (
            " Runs marked complete (the Complete column, ✓ in the heatmaps) are the exhaustive one-pixel check: "
            f"{COMPLETE_NOTE}. The worst case per threat model stays an upper bound: l0 k=1 also allows colours "
            "off the corners (onepixel)."
        )
    return page("fragility leaderboard", "".join(parts), lede=esc(lede))


def defense_section(board: pd.DataFrame) -> str:
    if board.empty:
        return "<p>(no runs yet)</p>"
    cols = columns_for(board)
    rows = board_rows(
        board,
        cols,
        lambda row: {k: str(row[k]) for k in ("model", "dataset", "defense")},
        lambda row: int(row["n"]) if not _isnan(row.get("n")) else None,
    )
    note = "[adaptive] columns use BPDA / EOT. A defense may claim only its worst case."
    return f'<p class="lede">{esc(note)}</p>' + render_table("defenses", "One row per model and defense", cols, rows)


def render_defense_page(board: pd.DataFrame) -> str:
    if board.empty:
        return page("fragility defense leaderboard", "<p>(no runs yet)</p>", script=False)
    bar = filter_bar({k: board[k].astype(str) for k in ("model", "dataset", "defense")})
    return page("fragility defense leaderboard", bar + defense_section(board))


def render_model_page(model: str, records: list[RunRecord], out_dir: Path) -> str:
    parts = ['<p><a href="../leaderboard.html">← leaderboard</a></p>']
    for r in sorted(records, key=lambda r: (r.dataset, r.defense, r.norm, r.eps, r.attack, r.variant)):
        anchor = f"{r.config_hash}-{r.variant}"
        lo, hi = acc_ci(r.robust_acc, r.n)
        prov = provenance(r)
        items = [
            ("dataset", esc(r.dataset)),
            ("defense", esc(r.defense)),
            ("threat model", esc(threat_of(r))),
            ("attack", esc(f"{r.attack} {r.params}") + ("" if r.variant == "standard" else f" [{esc(r.variant)}]")),
            ("clean accuracy", pct(r.clean_acc, *acc_ci(r.clean_acc, r.n))),
            ("robust accuracy", pct(r.robust_acc, lo, hi) + (f" {complete_mark(True)}" if is_complete(r) else "")),
            ("checkpoint sha256", esc(prov["weights_sha256"]) or '<span class="muted">not recorded</span>'),
            ("flags", esc(prov["flags"]) or '<span class="muted">none</span>'),
            ("seed", esc(r.seed)),
            ("images", esc(r.n)),
            (
                "versions",
                esc(f"fragility {r.fragility_version}, torch {r.torch_version}, torchvision {r.torchvision_version}"),
            ),
            ("git commit", esc(r.git_commit) or '<span class="muted">unknown</span>'),
            ("device, time", esc(f"{r.device}, {r.timestamp}")),
            ("config hash", esc(r.config_hash)),
        ]
        try:
            cfg = json.dumps(json.loads(r.config_json or "{}"), indent=2, sort_keys=True)
        except json.JSONDecodeError:
            cfg = r.config_json
        dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
        note = "" if r.variant == "standard" else f" (one run scores every variant, {esc(r.variant)} included)"
        pics = thumbs(figure_links(r, out_dir), prefix="../", cls="pic")
        parts.append(
            f'<section class="run" id="{esc(anchor)}"><h2>{esc(r.attack)} · {esc(threat_of(r))} · '
            f"{esc(r.dataset)} · {esc(r.defense)}{'' if r.variant == 'standard' else ' · ' + esc(r.variant)}</h2>"
            f'<dl class="prov">{dl}</dl><p>Rerun{note}:</p><pre><code>{esc(rerun_command(r, str(out_dir)))}</code></pre>'
            f"<details><summary>resolved config</summary><pre>{esc(cfg)}</pre></details>"
            + (f"<p>{pics}</p>" if pics else "")
            + "</section>"
        )
    return page(f"{model}: runs and provenance", "".join(parts), script=False)


# ---- exports ---------------------------------------------------------------------------------------
def _p(v: float) -> float | None:
    return None if _isnan(v) else round(100 * float(v), 2)


def export_records(records: list[RunRecord]) -> dict[str, dict]:
    """``{file name: record}``: one RobustBench-like record per (model, dataset, defense, threat
    model), numbers as numbers (accuracies in percent, like RobustBench; ``eps`` in the norm's units)."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in records:
        groups[(r.model, r.dataset, r.defense, r.norm, r.eps if not _isnan(r.eps) else None)].append(r)
    out = {}
    for (model, dataset, defense, norm, eps), recs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        worst = min(recs, key=lambda r: math.inf if _isnan(r.robust_acc) else r.robust_acc)
        std = [r for r in recs if r.variant == "standard"] or recs
        n = max(r.n for r in recs)
        lo, hi = acc_ci(worst.robust_acc, worst.n)
        threat = threat_label(norm, math.nan if eps is None else eps)
        shas = sorted({str(getattr(r, "weights_sha256", "") or "") for r in recs} - {""})
        flags = sorted({str(getattr(r, "flags", "") or "") for r in recs} - {""})
        rec = {
            "schema": SCHEMA,
            "name": model,
            "model": model,
            "dataset": dataset,
            "defense": defense,
            "threat_model": norm,
            "eps": eps,
            "eps_text": None if eps is None else format_number(eps),
            "n_samples": n,
            "clean_acc": _p(std[0].clean_acc),
            "robust_acc": _p(worst.robust_acc),
            "robust_acc_ci95": [_p(lo), _p(hi)],
            "worst_attack": worst.attack + ("" if worst.variant == "standard" else f" ({worst.variant})"),
            "units": "percent",
            "upper_bound": True,
            "weights_sha256": shas,  # the checkpoints' SHA-256 (one, unless runs of the name used different weights)
            "data_sha256": sorted({data_digest(r.config_json) for r in recs} - {""}),  # the data files' (inputs.py)
            "flags": flags,
            "attacks": [
                {
                    "attack": r.attack,
                    "variant": r.variant,
                    "params": r.params,
                    "robust_acc": _p(r.robust_acc),
                    "complete": is_complete(r),  # exhaustive: exact for its threat model, not an upper bound
                    "success_rate": _p(r.success_rate),
                    "success_ci95": [_p(r.success_ci_low), _p(r.success_ci_high)],
                    "mean_queries": None if _isnan(r.mean_queries) else float(r.mean_queries),
                    "seconds": None if _isnan(r.seconds) else float(r.seconds),
                    "seed": r.seed,
                    "config_hash": r.config_hash,
                    "fragility_version": r.fragility_version,
                    "git_commit": r.git_commit,
                }
                for r in sorted(recs, key=lambda r: (r.robust_acc, r.attack, r.variant))
            ],
        }
        name = "__".join(slug(x) for x in (model, dataset, defense, threat)) + ".json"
        out[name] = rec
    return out


# ---- writing ---------------------------------------------------------------------------------------
def write_pages(
    records: list[RunRecord],
    board: pd.DataFrame,
    summ: pd.DataFrame,
    out_dir: str | Path,
    write: Callable[[Path, str], None],
) -> Path:
    """Write leaderboard.html, models/*.html and exports/*.json with ``write(path, text)`` (atomic)."""
    out = Path(out_dir)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "exports").mkdir(parents=True, exist_ok=True)
    by_model: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        by_model[r.model].append(r)
    for m, recs in by_model.items():
        write(out / "models" / f"{slug(m)}.html", render_model_page(m, recs, out))
    for name, rec in export_records(records).items():
        write(out / "exports" / name, json.dumps(rec, indent=2, allow_nan=False) + "\n")
    path = out / "leaderboard.html"
    write(path, render_leaderboard(records, board, summ, out))
    return path


# ---- a picture of the page (README's screenshot) -----------------------------------------------------
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def screenshot(page_path: str | Path, png_path: str | Path, width: int = 1400, height: int = 1500, browser: str = "") -> Path:
    """Render ``page_path`` in the system's headless Chromium (Playwright drives it; nothing is
    downloaded) and save the top ``width`` x ``height`` pixels as a PNG."""
    import shutil
    import tempfile

    from playwright.sync_api import sync_playwright

    exe = browser or next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), "")
    if not exe:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=exe, headless=True, args=CHROMIUM_FLAGS, viewport={"width": width, "height": height}
        )
        try:
            pg = ctx.new_page()
            pg.goto(Path(page_path).resolve().as_uri(), wait_until="load")
            pg.screenshot(path=str(out))
        finally:
            ctx.close()
    return out


if __name__ == "__main__":  # python -m fragility.benchmarks.page RESULTS_DIR OUT.png
    import sys

    print(screenshot(Path(sys.argv[1]) / "leaderboard.html", sys.argv[2]))
