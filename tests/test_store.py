"""The results store: atomic runs, skip on re-run, crash safety, concurrent writers."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import textwrap

import pandas as pd
from records import make_run_record

from fragility.benchmarks.record import SAMPLE_COLUMNS, RunRecord
from fragility.benchmarks.store import ResultStore


def make_record(h: str, robust: float = 0.5, **kw) -> RunRecord:
    fields = dict(
        config_hash=h,
        attack="fgsm",
        params="eps=0.1",
        robust_acc=robust,
        success_rate=0.4,
        success_ci_low=0.1,
        success_ci_high=0.7,
        mean_l0=float("nan"),
        seconds=0.5,
    )
    return make_run_record(**(fields | kw))


def samples(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({c: [0.5 if t == "REAL" else i for i in range(n)] for c, t in SAMPLE_COLUMNS.items()}).assign(i=range(n))


def test_roundtrip_keeps_types(tmp_path):
    store = ResultStore(tmp_path)
    rec = make_record("a")
    store.write(rec, samples())
    (back,) = store.records()
    assert back == make_record("a") or (math.isnan(back.mean_l0) and back.robust_acc == 0.5 and back.targeted is False)
    assert isinstance(back.n, int) and isinstance(back.robust_acc, float)
    assert len(store.samples("a")) == 3
    assert store.has("a") and not store.has("b")


def test_records_filter_variants_in_the_database(tmp_path):
    store = ResultStore(tmp_path)
    for h, variant in (("a", "standard"), ("b", "escalated"), ("c", "adaptive-escalated"), ("d", "adaptive")):
        store.write(make_record(h, variant=variant), samples())
    assert [r.config_hash for r in store.records(variant_like="%escalated")] == ["b", "c"]
    assert len(store.records()) == 4


def test_replace_is_atomic_per_run(tmp_path):
    store = ResultStore(tmp_path)
    store.write(make_record("a", robust=0.5), samples(5))
    store.write(make_record("a", robust=0.3), samples(2))
    (back,) = store.records()
    assert back.robust_acc == 0.3 and len(store.samples("a")) == 2


def test_killed_writer_leaves_earlier_rows_intact(tmp_path):
    store = ResultStore(tmp_path)
    store.write(make_record("first"), samples())
    # A second process starts writing a run and dies mid-transaction (os._exit, no cleanup).
    code = textwrap.dedent(
        f"""
        import os, sqlite3
        con = sqlite3.connect({str(store.path)!r}, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO runs (config_hash, status) VALUES ('second', 'done')")
        con.execute("INSERT INTO samples (config_hash, i) VALUES ('second', 0)")
        os._exit(9)
        """
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    again = ResultStore(tmp_path)
    assert [r.config_hash for r in again.records()] == ["first"]
    assert len(again.samples("first")) == 3 and len(again.samples("second")) == 0


def _writer(path: str, k: int) -> None:
    store = ResultStore(path)
    for j in range(8):
        store.write(make_record(f"w{k}-{j}"), samples(4))


def test_concurrent_writers(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    store = ResultStore(tmp_path)
    assert len(store.records()) == 32
    con = sqlite3.connect(store.path)
    assert con.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 32 * 4


def test_old_store_gains_new_columns(tmp_path):
    con = sqlite3.connect(tmp_path / "results.sqlite")
    con.execute("CREATE TABLE runs (config_hash TEXT PRIMARY KEY, model TEXT)")
    con.commit()
    con.close()
    store = ResultStore(tmp_path)
    store.write(make_record("x"))
    assert store.records()[0].variant == "standard"
    assert os.path.getsize(store.path) > 0
