"""The results store: one SQL database, reached through SQLAlchemy Core.

``ResultStore(results_dir)`` opens the embedded default, SQLite at ``results_dir/results.sqlite``
(WAL journal and a busy timeout, so the processes of a parallel sweep on one machine can write to
it); ``ResultStore("postgresql+psycopg://user@host/db")`` (config key ``results_db=``) opens a
database server instead, for sweeps whose jobs run on several machines (SQLite's locking is unsafe
on the network file systems cluster nodes share). Both hold the same two tables:

- ``runs``: one typed row per run, keyed by config hash; ``status`` is ``done`` for a result and
  ``failed`` for a job that raised (then ``error`` holds its one-line reason). Only ``done`` rows
  are results: :meth:`records`, :meth:`get` and :meth:`has` never see the others;
- ``samples``: the run's per-sample facts, keyed by (config hash, i).

A run and its samples are written in one transaction, so a crash loses at most the run in flight
and a rerun replaces, never duplicates, a row. Columns follow :meth:`RunRecord.sql_types` and
``SAMPLE_COLUMNS``: a store written by an older version gains the new columns when it is opened.
:func:`merge_stores` copies the finished runs of one store into another (a laptop's SQLite into the
team's PostgreSQL) without duplicating a row.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import NullPool

from fragility.benchmarks.record import SAMPLE_COLUMNS, RunRecord
from fragility.errors import ConfigError

DB_NAME = "results.sqlite"
# Columns of ``runs`` that belong to the store, not to a result: why a failed job failed.
STORE_COLUMNS = {"error": "TEXT"}
# INTEGER maps to BIGINT so that sample ids and query counts never overflow on PostgreSQL.
_SQL_TYPES = {"INTEGER": sa.BigInteger, "REAL": sa.Float, "TEXT": sa.Text}


def is_url(target: str | Path) -> bool:
    return "://" in str(target)


class ResultStore:
    """``target``: a results directory (SQLite file inside it) or a SQLAlchemy database URL."""

    def __init__(self, target: str | Path, read_only: bool = False) -> None:
        """``read_only``: open an existing SQLite store for reading (leaderboards) even when its
        file or folder cannot be written; without it such a store is refused in one line."""
        self.read_only = False
        if is_url(target):
            self.url = _parse_url(str(target))
            sqlite_file = self.url.get_backend_name() == "sqlite" and self.url.database not in (None, "", ":memory:")
            self.path: Path | str = Path(self.url.database) if sqlite_file else self.url.render_as_string(hide_password=True)
        else:
            self.dir = Path(target)
            self.path = self.dir / DB_NAME
            self.read_only = _check_sqlite_path(self.dir, self.path, read_only)
            self.url = URL.create("sqlite", database=str(self.path))
            if self.read_only:  # never writes, not even WAL's side files
                self.url = URL.create("sqlite", database=f"file:{self.path}?mode=ro&immutable=1", query={"uri": "true"})
        self.engine = _engine(self.url, self.read_only)
        self._writer = self.engine.execution_options(fragility_write=True)
        self.runs, self.samples_table = _tables(self.engine.dialect.name)
        self._init()

    @classmethod
    def for_config(cls, cfg: Any) -> ResultStore:
        """The store a run config names: ``results_db`` when set, else ``results_dir``."""
        return cls(cfg.get("results_db") or cfg.results_dir)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    # -- schema --------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (SQLite: BEGIN IMMEDIATE, so writers queue on the busy timeout
        instead of failing when a read turns into a write)."""
        with _reachable(self), self._writer.begin() as con:
            yield con

    def _missing_columns(self, con: Connection) -> dict[str, list[sa.Column]] | None:
        insp = sa.inspect(con)
        missing = {}
        for table in (self.runs, self.samples_table):
            if not insp.has_table(table.name):
                return None
            have = {c["name"] for c in insp.get_columns(table.name)}
            missing[table.name] = [c for c in table.columns if c.name not in have]
        return missing

    def _init(self) -> None:
        """Create the tables, or add the columns a newer RunRecord has; a store that is already
        current is only read (no write lock taken)."""
        with _reachable(self), self.engine.connect() as con:
            if self.is_sqlite:
                _integrity(con, self.path, "quick_check")
            missing = self._missing_columns(con)
        if missing is not None and not any(missing.values()):
            return
        if self.read_only:
            if missing is None:
                raise ConfigError(f"results store {self.path} holds no fragility results")
            return  # an older store, read as it is
        with self._write() as con:
            if con.dialect.name == "postgresql":  # concurrent CREATE TABLE IF NOT EXISTS races on PostgreSQL
                con.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('fragility.store.schema'))"))
            self.runs.metadata.create_all(con)
            quote = con.dialect.identifier_preparer.quote
            for table, cols in (self._missing_columns(con) or {}).items():
                for c in cols:
                    con.execute(sa.text(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(c.name)} {c.type.compile(con.dialect)}"))

    def check(self) -> str:
        """A full integrity check (SQLite ``PRAGMA integrity_check``; a server checks its own):
        ``"ok"``, or a ConfigError naming the first problem."""
        if not self.is_sqlite:
            return "ok"
        with _reachable(self), self.engine.connect() as con:
            return _integrity(con, self.path, "integrity_check")

    # -- reading -------------------------------------------------------------------------------

    def has(self, config_hash: str) -> bool:
        q = sa.select(self.runs.c.config_hash).where(self.runs.c.config_hash == config_hash, self.runs.c.status == "done")
        with _reachable(self), self.engine.connect() as con:
            return con.execute(q).first() is not None

    def get(self, config_hash: str) -> RunRecord | None:
        """The finished run with this hash, or None (one indexed query)."""
        q = sa.select(self.runs).where(self.runs.c.config_hash == config_hash, self.runs.c.status == "done")
        with _reachable(self), self.engine.connect() as con:
            row = con.execute(q).mappings().first()
        return None if row is None else RunRecord.from_row(dict(row))

    def records(self, variant_like: str | None = None) -> list[RunRecord]:
        """Finished runs, oldest first; ``variant_like``: only variants matching this SQL LIKE pattern."""
        q = sa.select(self.runs).where(self.runs.c.status == "done")
        if variant_like is not None:
            q = q.where(self.runs.c.variant.like(variant_like))
        q = q.order_by(self.runs.c.timestamp, self.runs.c.config_hash)
        with _reachable(self), self.engine.connect() as con:
            return [RunRecord.from_row(dict(r)) for r in con.execute(q).mappings()]

    def failures(self) -> list[dict[str, Any]]:
        """Failed jobs not (yet) completed by a rerun: config hash, error, config, time."""
        r = self.runs.c
        q = sa.select(r.config_hash, r.error, r.config_json, r.timestamp).where(r.status == "failed").order_by(r.timestamp)
        with _reachable(self), self.engine.connect() as con:
            return [dict(row) for row in con.execute(q).mappings()]

    def samples(self, config_hash: str) -> pd.DataFrame:
        s = self.samples_table
        q = sa.select(s).where(s.c.config_hash == config_hash).order_by(s.c.i)
        with _reachable(self), self.engine.connect() as con:
            return pd.read_sql_query(q, con)

    # -- writing -------------------------------------------------------------------------------

    def write(self, record: RunRecord, samples: pd.DataFrame | None = None) -> None:
        """Insert or replace one finished run and its samples in one transaction."""
        row = {**dict.fromkeys(STORE_COLUMNS), **record.to_row()}
        with self._write() as con:
            self._put_run(con, row)
            self._put_samples(con, record.config_hash, _sample_rows(samples))

    def write_failure(self, config_hash: str, error: str, config_json: str = "{}", **fields: Any) -> bool:
        """Record a job that raised, as a ``failed`` row (never a result). A finished row with the
        same hash is kept; returns whether the failure was written."""
        row = {"config_hash": config_hash, "status": "failed", "error": error, "config_json": config_json, **fields}
        row = {k: v for k, v in row.items() if k in self.runs.c}
        with self._write() as con:
            done = con.execute(sa.select(self.runs.c.status).where(self.runs.c.config_hash == config_hash)).scalar()
            if done == "done":
                return False
            self._put_run(con, row)
        return True

    def _put_run(self, con: Connection, row: dict[str, Any]) -> None:
        runs = self.runs
        if con.dialect.name in ("sqlite", "postgresql"):
            dialect_insert = _dialect_insert(con.dialect.name)
            stmt = dialect_insert(runs).values(**row)
            update = {k: stmt.excluded[k] for k in row if k != "config_hash"}
            con.execute(stmt.on_conflict_do_update(index_elements=[runs.c.config_hash], set_=update))
        else:  # any other SQLAlchemy backend: delete + insert inside the same transaction
            con.execute(runs.delete().where(runs.c.config_hash == row["config_hash"]))
            con.execute(runs.insert().values(**row))

    def _put_samples(self, con: Connection, config_hash: str, rows: list[dict[str, Any]]) -> None:
        s = self.samples_table
        con.execute(s.delete().where(s.c.config_hash == config_hash))
        if rows:
            con.execute(s.insert(), [{"config_hash": config_hash, **r} for r in rows])


def merge_stores(source: ResultStore, dest: ResultStore) -> tuple[int, int]:
    """Copy every finished run of ``source`` that ``dest`` does not hold, with its samples, one
    transaction per run. Rows are keyed by config hash, so merging twice (or merging stores that
    share runs) never duplicates one. Returns (copied, already in dest)."""
    with _reachable(source), source.engine.connect() as con:
        rows = [dict(r) for r in con.execute(sa.select(source.runs).where(source.runs.c.status == "done")).mappings()]
    with _reachable(dest), dest.engine.connect() as con:
        have = set(con.execute(sa.select(dest.runs.c.config_hash).where(dest.runs.c.status == "done")).scalars())
    copied = 0
    for row in rows:
        h = row["config_hash"]
        if h in have:
            continue
        with _reachable(source), source.engine.connect() as con:
            s = source.samples_table
            samples = [dict(r) for r in con.execute(sa.select(s).where(s.c.config_hash == h)).mappings()]
        with dest._write() as con:
            dest._put_run(con, {k: v for k, v in row.items() if k in dest.runs.c})
            cols = set(dest.samples_table.c.keys()) - {"config_hash"}
            dest._put_samples(con, h, [{k: v for k, v in r.items() if k in cols} for r in samples])
        copied += 1
    return copied, len(rows) - copied


# -- helpers ---------------------------------------------------------------------------------------


def _tables(dialect: str) -> tuple[sa.Table, sa.Table]:
    md = sa.MetaData()
    types = {**RunRecord.sql_types(), **STORE_COLUMNS}
    runs = sa.Table(
        "runs",
        md,
        sa.Column("config_hash", sa.Text, primary_key=True),
        *(sa.Column(c, _SQL_TYPES[t]) for c, t in types.items() if c != "config_hash"),
    )
    samples = sa.Table(
        "samples",
        md,
        sa.Column("config_hash", sa.Text, primary_key=True),
        *(sa.Column(c, _SQL_TYPES[t], primary_key=(c == "i"), autoincrement=False) for c, t in SAMPLE_COLUMNS.items()),
    )
    return runs, samples


def _parse_url(text: str) -> URL:
    try:
        url = make_url(text)
    except ArgumentError:
        raise ConfigError(f"results_db: {text!r} is not a database URL (e.g. postgresql://user@host/db)") from None
    if url.drivername == "postgresql":  # SQLAlchemy's default driver is psycopg2; the postgres extra installs psycopg 3
        url = url.set(drivername="postgresql+psycopg")
    return url


def _check_sqlite_path(folder: Path, path: Path, read_only: bool) -> bool:
    """Folder and file faults as one line; returns whether the store must be opened read-only."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"results_dir {folder} is not a folder")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise ConfigError(f"results store {path} is not a file; move it aside")
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise ConfigError(f"results store {path} cannot be read: {e.strerror or e}") from None
        if head and head != b"SQLite format 3\x00":
            raise ConfigError(f"results store {path} is corrupt (not an SQLite database); move it aside")
        writable = os.access(path, os.W_OK) and os.access(folder, os.W_OK | os.X_OK)
    else:
        if read_only:
            raise ConfigError(f"no results store in {folder} (expected {DB_NAME}); run fragility first")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create results_dir {folder}: {e.strerror or e}") from None
        writable = os.access(folder, os.W_OK | os.X_OK)
    if writable:
        return False
    if read_only:
        return True
    raise ConfigError(f"results store {path} is read-only (its file or folder cannot be written); use another results_dir")


def _integrity(con: Connection, path: Any, pragma: str) -> str:
    try:
        rows = [str(r[0]) for r in con.exec_driver_sql(f"PRAGMA {pragma}").all()]
    except DatabaseError as e:
        first = str(e.orig or e).strip().splitlines()[0]
        raise ConfigError(f"results store {path} is corrupt ({first}); move it aside") from None
    if rows != ["ok"]:
        raise ConfigError(f"results store {path} is corrupt ({pragma}: {rows[0] if rows else 'no answer'}); move it aside")
    return "ok"


def _engine(url: URL, read_only: bool = False) -> sa.Engine:
    # NullPool: a store is opened per run and per process; pooled connections would outlive it.
    try:
        if url.get_backend_name() != "sqlite":
            return sa.create_engine(url, poolclass=NullPool)
        engine = sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": 60})
    except (NoSuchModuleError, ModuleNotFoundError) as e:
        raise ConfigError(
            f"results_db: no driver for {url.drivername} ({e}); for PostgreSQL: pip install 'fragility[postgres]'"
        ) from None

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_con, _record):
        dbapi_con.isolation_level = None  # SQLAlchemy emits BEGIN itself (below), pysqlite does not
        dbapi_con.execute("PRAGMA busy_timeout = 60000")
        if url.database not in (None, "", ":memory:") and not read_only:
            dbapi_con.execute("PRAGMA journal_mode = WAL")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(con):
        con.exec_driver_sql("BEGIN IMMEDIATE" if con.get_execution_options().get("fragility_write") else "BEGIN")

    return engine


def _dialect_insert(name: str):
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


@contextmanager
def _reachable(store: ResultStore) -> Iterator[None]:
    """A database server that cannot be reached is a one-line ConfigError (SQLite files keep
    their own errors)."""
    try:
        yield
    except DatabaseError as e:
        if store.is_sqlite:  # a corrupt, vanished or unwritable file, one line
            first = str(e.orig or e).strip().splitlines()[0] if str(e.orig or e).strip() else type(e).__name__
            raise ConfigError(f"results store {store.path}: {first}") from None
        if not isinstance(e, OperationalError):
            raise
        first = str(e.orig or e).strip().splitlines()[0] if str(e.orig or e).strip() else type(e).__name__
        raise ConfigError(f"results_db: cannot use {store.path}: {first}") from None


def _sample_rows(samples: pd.DataFrame | None) -> list[dict[str, Any]]:
    if samples is None or not len(samples):
        return []
    cols = [c for c in SAMPLE_COLUMNS if c in samples.columns]
    data = samples[cols].astype(object).where(samples[cols].notna(), None)
    return [{c: _py(v) for c, v in zip(cols, r)} for r in data.itertuples(index=False)]


def _py(v):
    """numpy scalars -> Python scalars; NaN -> NULL."""
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and math.isnan(v) else v
