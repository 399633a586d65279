"""Sparse attacks on the leaderboards: the exhaustive one-pixel check (sparse_rs exhaustive=true) is
marked complete in leaderboard.csv / .md, the terminal table and the HTML pages, a random-search
sparse_rs row is not; L0 threat models read ``l0 k=1``, ``patch 4x4``, ``frame width 2`` everywhere
(summary, tabs, defense board, exports) and Lp labels are unchanged. No model runs: the records take
their params, norm and budget from the attacks themselves and go through the store."""

from __future__ import annotations

import html
import json
import math

import html5lib
import pandas as pd
import pytest
from records import make_run_record

from fragility.attacks.onepixel import OnePixel
from fragility.attacks.sparse_rs import SparseRS
from fragility.benchmarks import page
from fragility.benchmarks.leaderboard import defense_leaderboard, terminal_table, write_leaderboards
from fragility.benchmarks.record import RunRecord
from fragility.benchmarks.store import ResultStore
from fragility.benchmarks.worst_case import threat

EVIL = '<script>alert("x")</script>'


def record(i: int, attack, *, robust: float, defense: str = "none", **kw) -> RunRecord:
    """A record as the runner writes it for ``attack`` (name, describe(), norm, budget)."""
    eps = attack.budget
    fields = dict(config_hash=f"{i:016x}", model="digits_cnn", dataset="digits-test", defense=defense, attack=attack.name)
    fields |= dict(params=attack.describe(), norm=str(attack.norm or "none"), eps=math.nan if eps is None else float(eps))
    fields |= dict(n=50, clean_acc=0.96, robust_acc=robust, n_attacked=48, success_ci_low=0.36, success_ci_high=0.64)
    fields |= dict(mean_queries=100.0, mean_linf=1.0)
    return make_run_record(**(fields | kw))


def pgd(eps: float = 8 / 255):
    from fragility.attacks.pgd import PGD

    return PGD(eps=eps)


@pytest.fixture
def stored(tmp_path) -> list[RunRecord]:
    """Exhaustive and random-search k=1 runs, a patch, a frame and a PGD run, read back from a store."""
    recs = [
        record(1, SparseRS(mode="pixels", k=1, exhaustive=True), robust=0.30),
        record(2, SparseRS(mode="pixels", k=1, queries=100), robust=0.40),
        record(3, SparseRS(mode="patch", size=4, queries=100), robust=0.20),
        record(4, SparseRS(mode="frame", width=2, queries=100), robust=0.10),
        record(5, pgd(), robust=0.50),
        record(6, SparseRS(mode="pixels", k=1, exhaustive=True), robust=0.35, defense="jpeg"),
    ]
    store = ResultStore(tmp_path / "store")
    for r in recs:
        store.write(r)
    back = store.records()
    assert len(back) == len(recs)
    return back


def strict_parse(text: str) -> None:
    html5lib.HTMLParser(strict=True).parse(text)


def test_labels_read_as_a_person_writes_them():
    assert page.threat_label("l0", SparseRS(k=1).budget) == "l0 k=1"
    assert page.threat_label("l0", OnePixel(pixels=3).budget) == "l0 k=3"  # onepixel shares the L0 label
    assert page.threat_label("l0_patch", SparseRS(mode="patch", size=4).budget) == "patch 4x4"
    assert page.threat_label("l0_frame", SparseRS(mode="frame", width=2).budget) == "frame width 2"
    assert page.threat_label("linf", 8 / 255) == "linf 8/255"  # Lp labels unchanged
    assert page.threat_label("linf", 0.3) == "linf 0.3" and page.threat_label("l2", 0.5) == "l2 0.5"
    assert page.threat_label("none", math.nan) == "none" and page.threat_label("l0", math.nan) == "l0"
    assert page.threat_label("patch", 0.05) == "patch 0.05"  # the trained patch's budget is an area


def test_is_complete_only_for_the_exhaustive_check(stored):
    by = {r.config_hash: r for r in stored}
    assert page.is_complete(by[f"{1:016x}"]) and page.is_complete(by[f"{6:016x}"])
    assert not any(page.is_complete(by[f"{i:016x}"]) for i in (2, 3, 4, 5))
    # a record whose params lack the key falls back to the attack's extra_json
    bare = record(7, SparseRS(k=1), robust=0.3, params="mode=pixels k=1", extra_json=json.dumps({"exhaustive": True}))
    assert page.is_complete(bare)
    assert not page.is_complete(record(8, SparseRS(k=1), robust=0.3, params="mode=pixels k=1", extra_json="{bad"))
    # another attack that happened to say exhaustive=True is not the check
    assert not page.is_complete(record(9, OnePixel(), robust=0.3, params="exhaustive=True"))
    # nor is the check of a random model: each candidate was asked of one draw
    noisy = SparseRS(mode="pixels", k=1, exhaustive=True)
    assert not page.is_complete(record(10, noisy, robust=0.3, defense="gaussian_noise", flags="random_output 64/64"))
    assert page.is_complete(record(11, noisy, robust=0.3, flags="constant_output 64/64"))


def test_csv_md_and_terminal_mark_the_exhaustive_row(stored, tmp_path):
    out = tmp_path / "boards"
    write_leaderboards(stored, out)
    csv = pd.read_csv(out / "leaderboard.csv")
    assert csv["complete"].dtype == bool
    done = dict(zip(csv["config_hash"].map(lambda h: int(str(h), 16)), csv["complete"]))
    assert done == {1: True, 2: False, 3: False, 4: False, 5: False, 6: True}

    md = (out / "leaderboard.md").read_text()
    runs = md.split("## All runs")[1]
    header = next(line for line in runs.splitlines() if line.startswith("|"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert "complete" in cols
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in runs.splitlines()[4:] if line.startswith("|")]
    marked = {row[cols.index("params")]: row[cols.index("complete")] for row in rows}
    assert marked["mode=pixels k=1 order=guided exhaustive=True"] == "yes"
    assert marked["mode=pixels k=1 order=guided queries=100"] == "" and marked["mode=patch size=4 queries=100"] == ""
    assert "exact for that threat model, not an upper bound" in runs

    term = terminal_table(stored)
    lines = term.splitlines()
    assert "complete" in lines[0].split()
    rows = lines[1 : 1 + len(stored)]
    assert sum("exhaustive=True" in ln for ln in rows) == 2
    assert all(("exhaustive=True" in ln) == (" yes " in ln) for ln in rows)  # marked exactly where exhaustive
    assert "not an upper bound" in term  # the footnote


def test_no_marker_without_an_exhaustive_run(tmp_path):
    recs = [record(1, SparseRS(k=1, queries=100), robust=0.4), record(2, pgd(), robust=0.5)]
    write_leaderboards(recs, tmp_path)
    assert not pd.read_csv(tmp_path / "leaderboard.csv")["complete"].any()
    assert "complete" not in (tmp_path / "leaderboard.md").read_text()
    assert "complete" not in terminal_table(recs)
    main = (tmp_path / "leaderboard.html").read_text()
    assert 'class="complete"' not in main and 'title="complete"' not in main


def test_html_marks_the_exhaustive_row_and_labels_threats(stored, tmp_path):
    out = tmp_path / "boards"
    write_leaderboards(stored, out)
    main = (out / "leaderboard.html").read_text()
    strict_parse(main)
    runs = main.split('id="runs"')[1].split("</table>")[0]
    assert 'title="complete"' in runs and ">Complete<" in runs  # the column, raw name as tooltip
    marked = [tr for tr in runs.split("<tr")[3:] if 'class="complete"' in tr]
    assert len(marked) == 2 and all("exhaustive=True" in tr for tr in marked)  # both exhaustive rows, nothing else
    assert f'title="complete: {html.escape(page.COMPLETE_NOTE, quote=True)}"' in runs  # the note is the marker's tooltip
    assert "not an upper bound" in main.split('<p class="lede">')[1].split("</p>")[0]  # where the page explains
    for t in ("l0 k=1", "patch 4x4", "frame width 2", "linf 8/255"):
        assert f'<button type="button" role="tab" data-value="{t}"' in main
    assert "l0_patch" not in main.split('id="summary"')[1].split("</table>")[0]
    heat = next(f for f in main.split("<figure")[1:] if 'data-threat="l0 k=1"' in f.split(">")[0] and "heat" in f)
    assert "✓" in heat and "exact for that threat model" in heat

    model = (out / "models" / f"{page.slug('digits_cnn')}.html").read_text()
    strict_parse(model)
    assert model.count('class="complete"') == 2 and "frame width 2" in model

    summ = pd.read_csv(out / "summary.csv")
    assert set(summ["threat"]) == {"l0 k=1", "patch 4x4", "frame width 2", "linf 8/255"}
    assert {threat(r) for r in stored} == set(summ["threat"])  # one label for the summary and the pages
    exports = {f.name: json.loads(f.read_text()) for f in (out / "exports").glob("*.json")}
    pix = next(e for e in exports.values() if e["threat_model"] == "l0" and e["defense"] == "none")
    assert {a["params"]: a["complete"] for a in pix["attacks"]} == {
        "mode=pixels k=1 order=guided exhaustive=True": True,
        "mode=pixels k=1 order=guided queries=100": False,
    }
    assert "worst l0 k=1" in defense_leaderboard(stored).columns


def test_escaped_where_user_strings_meet_the_marker(tmp_path):
    evil = record(1, SparseRS(k=1, exhaustive=True), robust=0.3, model=EVIL)
    write_leaderboards([evil], tmp_path)
    for f in [tmp_path / "leaderboard.html", *(tmp_path / "models").glob("*.html")]:
        text = f.read_text()
        strict_parse(text)
        assert "<script>alert" not in text and 'class="complete"' in text
