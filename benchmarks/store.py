"""The results store: an embedded SQLite database in ``results_dir``.

One row per run in ``runs`` (keyed by config hash) and its per-sample facts in ``samples``, both
written in a single transaction when the run finishes: a crash loses at most the run in flight,
never earlier rows. WAL mode and a busy timeout let several processes (a Hydra multirun with a
parallel launcher) write to the same store. Columns follow :class:`RunRecord`; a store written by
an older version gains new columns on open.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fragility.benchmarks.record import SAMPLE_COLUMNS, RunRecord

DB_NAME = "results.sqlite"


class ResultStore:
    def __init__(self, results_dir: str | Path) -> None:
        self.dir = Path(results_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / DB_NAME
        self._init()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        con.execute("PRAGMA busy_timeout = 60000")
        return con

    def _init(self) -> None:
        con = self._connect()
        try:
            con.execute("PRAGMA journal_mode = WAL")
            types = RunRecord.sql_types()
            cols = ", ".join(f"{c} {t}" for c, t in types.items() if c != "config_hash")
            con.execute(f"CREATE TABLE IF NOT EXISTS runs (config_hash TEXT PRIMARY KEY, {cols})")
            have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            for c, t in types.items():
                if c not in have:
                    con.execute(f"ALTER TABLE runs ADD COLUMN {c} {t}")
            scols = ", ".join(f"{c} {t}" for c, t in SAMPLE_COLUMNS.items())
            con.execute(f"CREATE TABLE IF NOT EXISTS samples (config_hash TEXT NOT NULL, {scols}, PRIMARY KEY (config_hash, i))")
        finally:
            con.close()

    def has(self, config_hash: str) -> bool:
        con = self._connect()
        try:
            return (
                con.execute("SELECT 1 FROM runs WHERE config_hash = ? AND status = 'done'", (config_hash,)).fetchone() is not None
            )
        finally:
            con.close()

    def write(self, record: RunRecord, samples: pd.DataFrame | None = None) -> None:
        """Insert or replace one run and its samples atomically."""
        row = record.to_row()
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                names = list(row)
                con.execute(
                    f"INSERT OR REPLACE INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                    [row[c] for c in names],
                )
                con.execute("DELETE FROM samples WHERE config_hash = ?", (record.config_hash,))
                if samples is not None and len(samples):
                    scols = list(SAMPLE_COLUMNS)
                    data = samples[scols].astype(object).where(samples[scols].notna(), None)
                    con.executemany(
                        f"INSERT INTO samples (config_hash, {', '.join(scols)}) VALUES (?, {', '.join('?' * len(scols))})",
                        ([record.config_hash, *(_py(v) for v in r)] for r in data.itertuples(index=False)),
                    )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    def records(self) -> list[RunRecord]:
        con = self._connect()
        con.row_factory = sqlite3.Row
        try:
            rows = con.execute("SELECT * FROM runs WHERE status = 'done' ORDER BY timestamp").fetchall()
        finally:
            con.close()
        return [RunRecord.from_row(dict(r)) for r in rows]

    def get(self, config_hash: str) -> RunRecord | None:
        for r in self.records():
            if r.config_hash == config_hash:
                return r
        return None

    def samples(self, config_hash: str) -> pd.DataFrame:
        con = self._connect()
        try:
            return pd.read_sql_query("SELECT * FROM samples WHERE config_hash = ? ORDER BY i", con, params=(config_hash,))
        finally:
            con.close()

    def frame(self, records: Iterable[RunRecord] | None = None) -> pd.DataFrame:
        recs = list(records) if records is not None else self.records()
        return pd.DataFrame([r.__dict__ for r in recs], columns=RunRecord.columns())


def _py(v):
    """numpy scalars -> Python scalars for sqlite3."""
    return v.item() if hasattr(v, "item") else v
