"""The leaderboard page (benchmarks/page.py): valid HTML, every user string escaped, readable
cells, per-model provenance pages with a rerun command that reproduces the config hash, and
RobustBench-like JSON exports with numbers as numbers. No model runs: records are made here."""

from __future__ import annotations

import json
import math
import shlex

import html5lib
import pytest
from conftest import compose
from omegaconf import OmegaConf
from records import make_run_record

from fragility.benchmarks import page
from fragility.benchmarks.leaderboard import write_leaderboards
from fragility.benchmarks.provenance import config_hash
from fragility.benchmarks.record import RunRecord

EVIL = '<script>alert("x")</script>&"\''


def make_record(i: int, *, model="m", defense="none", attack="pgd", eps=0.1, robust=0.5, variant="standard", **kw) -> RunRecord:
    fields = dict(config_hash=f"{i:016x}", model=model, dataset="digits-test", defense=defense, attack=attack, variant=variant)
    fields |= dict(params=f"norm=linf eps={eps}", eps=eps, n=200, robust_acc=robust, n_attacked=180, success_rate=0.47)
    fields |= dict(success_ci_low=0.375, success_ci_high=0.567, mean_queries=10.0, mean_linf=eps, mean_l0=40.0, seconds=1.5)
    return make_run_record(**(fields | kw))


def sample_records() -> list[RunRecord]:
    recs, i = [], 0
    for model in ("alpha", "beta", EVIL):
        for attack in ("fgsm", "pgd"):
            for eps in (0.1, 0.2, 0.3):
                i += 1
                robust = max(0.0, 0.9 - eps * (2 if attack == "pgd" else 1.5) - (0.1 if model == "beta" else 0))
                recs.append(make_record(i, model=model, attack=attack, eps=eps, robust=robust))
    recs.append(make_record(99, model="alpha", defense=EVIL, attack="fgsm", eps=0.1, robust=0.7, params=EVIL))
    recs.append(make_record(98, model="alpha", defense=EVIL, attack="fgsm", eps=0.1, robust=0.6, variant="adaptive"))
    return recs


def strict_parse(text: str) -> None:
    html5lib.HTMLParser(strict=True).parse(text)  # raises on any parse error


def test_page_valid_escaped_and_readable(tmp_path):
    recs = sample_records()
    evil_fig = f"runs/{recs[0].config_hash}/{EVIL.replace('/', '_')}.png"
    (tmp_path / evil_fig).parent.mkdir(parents=True)
    (tmp_path / evil_fig).write_bytes(b"png")
    recs[0].extra_json = json.dumps({"figures": [evil_fig, "../../etc/passwd"]})
    write_leaderboards(recs, tmp_path)
    main = (tmp_path / "leaderboard.html").read_text()
    for f in [tmp_path / "leaderboard.html", tmp_path / "defense_leaderboard.html", *(tmp_path / "models").glob("*.html")]:
        text = f.read_text()
        strict_parse(text)
        assert "<script>alert" not in text, f
        assert text.count("<script>") <= 1  # only the page's own script
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in main
    assert '47.0% <span class="ci">[37.5, 56.7]</span>' in main  # value and interval in one cell
    assert 'title="success_rate"' in main and ">Attack success<" in main  # friendly header, raw name as tooltip
    groups = main.split('id="runs"')[1].split('<tr class="groups">')[1].split("</tr>")[0]
    where = [groups.find(f">{g}<") for g in ("identity", "clean", "robust", "cost", "provenance")]
    assert -1 not in where and where == sorted(where)  # identity | clean | robust | cost | provenance
    assert "etc/passwd" not in main  # a figure path outside the results folder is not linked
    assert 'class="thumb"' in main and "%3Cscript%3E" in main  # thumbnail links are URL-quoted
    assert main.count("data:image/png;base64,") == 1  # one budget curve (one dataset, one norm)
    assert main.count('<table class="heat">') == 3  # one heatmap per threat model
    for t in ("linf 0.1", "linf 0.3"):
        assert f'<button type="button" role="tab" data-value="{t}"' in main
    ids = [part.split('"')[0] for part in main.split(' id="')[1:]]
    assert len(ids) == len(set(ids))


def test_model_page_provenance_and_rerun_reproduces_hash(tmp_path):
    cfg = compose(["attack=pgd", "attack.eps=0.2", "defense=bit_depth", "n_samples=64", "logger=none"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    rec = make_record(1, model="digits_cnn", config_json=json.dumps(resolved))
    rec.config_hash = config_hash(resolved)
    rec.weights_sha256 = "ab" * 32  # read with getattr: a store from before the field still renders
    rec.flags = "zero_grad 64/64"
    cmd = page.rerun_command(rec, "results/x")
    args = shlex.split(cmd)
    assert args[0] == "fragility" and "attack=pgd" in args and "defense=bit_depth" in args and "force=true" in args
    again = OmegaConf.to_container(compose([a for a in args[1:] if not a.startswith(("results_dir=", "force="))]), resolve=True)
    assert config_hash(again) == rec.config_hash
    html = page.render_model_page("digits_cnn", [rec], tmp_path)
    strict_parse(html)
    assert (
        "ab" * 32 in html
        and "zero_grad 64/64" in html
        and "attack.eps=0.2" in html
        and f'id="{rec.config_hash}-standard"' in html
    )


def test_exports_robustbench_like_numbers(tmp_path):
    recs = sample_records()
    write_leaderboards(recs, tmp_path)
    files = sorted((tmp_path / "exports").glob("*.json"))
    assert len(files) == 3 * 3 + 1  # (model x threat) + the defended model at one budget
    names = {f.name for f in files}
    assert "alpha__digits-test__none__linf_0.1-01f0aa.json" in names or any(
        n.startswith("alpha__digits-test__none__") for n in names
    )
    assert all("/" not in n and not n.startswith(".") for n in names)
    rec = json.loads(next(f for f in files if f.name.startswith("beta__") and "0.3" in f.name).read_text())
    assert rec["schema"] == page.SCHEMA and rec["threat_model"] == "linf" and rec["eps"] == 0.3
    assert isinstance(rec["clean_acc"], float) and rec["clean_acc"] == 90.0
    assert math.isclose(rec["robust_acc"], 100 * max(0.0, 0.9 - 0.6 - 0.1), abs_tol=0.01) and rec["worst_attack"] == "pgd"
    lo, hi = rec["robust_acc_ci95"]
    assert lo <= rec["robust_acc"] <= hi and all(isinstance(a["robust_acc"], float) for a in rec["attacks"])
    defended = json.loads(next(f for f in files if "alpha__" in f.name and "script" in f.name).read_text())
    assert defended["defense"] == EVIL and defended["robust_acc"] == 60.0 and defended["worst_attack"] == "fgsm (adaptive)"


def test_unknown_and_empty_columns_render():
    df = __import__("pandas").DataFrame(
        {"model": ["a", "b"], "worst linf 0.1": [0.25, 0.5], "new_metric": [3.0, 4.0], "flags": ["", ""]}
    )
    cols = page.columns_for(df)
    assert [c.key for c in cols] == ["model", "worst linf 0.1", "new_metric"]  # an all-empty column is left out
    html = page.render_table("t", "cap", cols, page.board_rows(df, cols, lambda r: {"model": r["model"]}, lambda r: 100))
    strict_parse(f"<!doctype html><html lang=en><head><title>x</title></head><body>{html}</body></html>")
    assert "25.0% " in html and ">3<" in html and 'data-model="a"' in html


def test_empty_store_renders_valid_pages(tmp_path):
    write_leaderboards([], tmp_path)
    for name in ("leaderboard.html", "defense_leaderboard.html"):
        text = (tmp_path / name).read_text()
        strict_parse(text)
        assert "(no runs yet)" in text


@pytest.mark.parametrize("text", ["linf 0.1", "a/b", "..", EVIL])
def test_slug_is_a_safe_file_name(text):
    s = page.slug(text)
    assert "/" not in s and not s.startswith(".") and s.replace("_", "").replace("-", "").replace(".", "").isalnum()
