"""The store on SQLAlchemy: SQLite and a real PostgreSQL server behave the same.

PostgreSQL: ``FRAGILITY_TEST_PG_URL`` (``.ci/run`` starts a server and sets it), else the tests
start a throwaway server themselves when PostgreSQL's ``initdb`` is installed (Debian package
``postgresql``); else they skip and say so. Each test gets its own fresh database.
"""

from __future__ import annotations

import glob
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_store import make_record, samples

from fragility.benchmarks.record import RunRecord
from fragility.benchmarks.store import ResultStore, merge_stores
from fragility.errors import ConfigError

# -- a real PostgreSQL server ---------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    cands = ([str(Path(found).resolve().parent)] if found else []) + sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    return next((Path(d) for d in cands if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory):
    pytest.importorskip("psycopg", reason="PostgreSQL tests need the postgres extra: pip install -e '.[postgres]'")
    url = os.environ.get("FRAGILITY_TEST_PG_URL")
    if url:
        yield url
        return
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server: set FRAGILITY_TEST_PG_URL or install PostgreSQL (apt-get install postgresql)")
    data = Path(tempfile.mkdtemp(prefix="fragility-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the Debian package's postgres user
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root without a 'postgres' user to run the test server; set FRAGILITY_TEST_PG_URL")
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", opts, "-l", str(data / "log"), "-w", "start"]
    if subprocess.run(start, capture_output=True).returncode:
        pytest.skip(f"could not start a PostgreSQL test server: {(data / 'log').read_text()[-300:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def pg_url(pg_admin_url):
    """A fresh database on the test server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    yield sa.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """Where a store lives: a results directory (SQLite) or a PostgreSQL URL."""
    return str(tmp_path) if request.param == "sqlite" else request.getfixturevalue("pg_url")


def _count(store: ResultStore, table: str, where: str = "") -> int:
    with store.engine.connect() as c:
        return c.exec_driver_sql(f"SELECT COUNT(*) FROM {table} {where}").scalar()


# -- behaviour, on both backends ----------------------------------------------------------------


def test_roundtrip_and_one_query_get(target):
    store = ResultStore(target)
    store.write(make_record("a", robust=0.25), samples(5))
    statements = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    back = store.get("a")
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert back.robust_acc == 0.25 and back.n == 10 and back.targeted is False and isinstance(back.n, int)
    assert store.get("missing") is None and store.has("a") and not store.has("missing")
    frame = store.samples("a")
    assert list(frame["i"]) == [0, 1, 2, 3, 4] and frame["pred_conf"].iloc[0] == 0.5


def test_failed_rows_are_never_results(target):
    store = ResultStore(target)
    assert store.write_failure("f", "ConfigError: bad", '{"attack": "pgd"}', attack="pgd")
    assert store.records() == [] and store.get("f") is None and not store.has("f")
    assert [(f["config_hash"], f["error"]) for f in store.failures()] == [("f", "ConfigError: bad")]
    store.write(make_record("f"), samples(2))  # the rerun completes it: the same row, now a result
    assert [r.config_hash for r in store.records()] == ["f"] and store.failures() == []
    assert not store.write_failure("f", "late error")  # a finished run is never turned into a failure
    assert store.get("f") is not None and _count(store, "runs") == 1


def test_new_record_fields_become_columns(target, monkeypatch):
    ResultStore(target).write(make_record("old"))
    types = RunRecord.sql_types()
    monkeypatch.setattr(RunRecord, "sql_types", classmethod(lambda cls: {**types, "new_metric": "REAL"}))
    store = ResultStore(target)  # an older store gains the column on open
    cols = {c["name"] for c in sa.inspect(store.engine).get_columns("runs")}
    assert "new_metric" in cols and [r.config_hash for r in store.records()] == ["old"]


def test_merge_copies_missing_runs_once(target, tmp_path):
    laptop = ResultStore(tmp_path / "laptop")
    laptop.write(make_record("a"), samples(3))
    laptop.write(make_record("b"), samples(4))
    laptop.write_failure("c", "boom")  # failures stay where they happened
    team = ResultStore(target)
    team.write(make_record("b", robust=0.1), samples(1))  # the team's own row for b wins
    assert merge_stores(laptop, team) == (1, 1)
    assert merge_stores(laptop, team) == (0, 2)
    assert sorted(r.config_hash for r in team.records()) == ["a", "b"] and team.get("b").robust_acc == 0.1
    assert _count(team, "runs") == 2 and _count(team, "samples") == 3 + 1


def _writer(target: str, k: int) -> None:
    store = ResultStore(target)
    for j in range(6):
        store.write(make_record(f"w{k}-{j}"), samples(4))
        store.write(make_record("shared", robust=k / 10), samples(k + 1))  # every writer fights for one row


def test_concurrent_writers(target):
    ResultStore(target)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(target, k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    store = ResultStore(target)
    assert len(store.records()) == 4 * 6 + 1 and _count(store, "runs") == 25
    # the shared row is one writer's run, whole: its samples match its robust accuracy
    shared = store.get("shared")
    assert len(store.samples("shared")) == round(shared.robust_acc * 10) + 1
    assert _count(store, "samples") == 4 * 6 * 4 + len(store.samples("shared"))


# -- URLs -----------------------------------------------------------------------------------------


def test_sqlite_url_and_bad_urls(tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path}/x.sqlite")
    store.write(make_record("a"))
    assert store.path == tmp_path / "x.sqlite" and ResultStore(f"sqlite:///{tmp_path}/x.sqlite").has("a")
    with pytest.raises(ConfigError, match="not a database URL"):
        ResultStore("://nowhere")
    with pytest.raises(ConfigError, match="no driver for nope"):
        ResultStore("nope://u@localhost/db")


def test_unreachable_server_is_one_line(pg_admin_url):
    url = sa.make_url(pg_admin_url).set(port=_free_port(), password="secret")
    with pytest.raises(ConfigError) as e:
        ResultStore(url.render_as_string(hide_password=False))
    assert "\n" not in str(e.value) and "results_db: cannot use" in str(e.value) and "secret" not in str(e.value)


def test_plain_postgresql_url_uses_psycopg(pg_url):
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    store = ResultStore(plain)
    store.write(make_record("p"))
    assert store.engine.dialect.driver == "psycopg" and ResultStore(pg_url).has("p")
