"""Sweeps through Hydra's launchers, measured (docs/sweeps.md, BENCHMARKS.md).

One 12-run digits sweep (digits CNN, PGD at eps 0.1/0.2/0.3 x seeds 0-3, ``--n`` seeded test
images each), run through the real ``fragility`` console script:

1. wall time, back to back: serial (Hydra's basic launcher) vs joblib (2 workers) vs Ray (a local
   cluster of 2 CPUs, one job per CPU, that the sweep starts and stops) vs ``ray_cluster`` (the same
   local cluster started beforehand with ``ray start --head``, untimed, and joined by the sweep: how
   a cluster is used); each in a fresh results dir, so nothing is skipped;
2. the same sweep (joblib) writing to PostgreSQL vs to SQLite: the same rows, compared column by
   column and sample by sample;
3. a Ray worker killed (SIGKILL) while it runs a job, with Ray's task retries off so that the sweep
   really loses it; then the same command rerun: rows lost and duplicated, counted in the database.

    python benchmarks/peers/bench_sweep.py --out results/bench_sweep          # all three
    python benchmarks/peers/bench_sweep.py --parts timing --repeats 2          # timing only
    python benchmarks/peers/bench_sweep.py --parts timing --launchers serial,ray_gpu --extra escalate=false device=cuda  # on a GPU

PostgreSQL: ``--pg-url`` or ``FRAGILITY_TEST_PG_URL``, else a throwaway server is started with the
Debian package's initdb/pg_ctl (as the ``postgres`` user when run as root). The machine may be
shared: run the compared sweeps back to back and read the timings as such.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from fragility.benchmarks.store import ResultStore

FRAGILITY = [sys.executable, "-c", "from fragility.benchmarks.cli import main; main()"]
# a 2-CPU Ray head on loopback, the ray_cluster rows' cluster
HEAD_FLAGS = ["--num-cpus=2", "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
LAUNCHERS = {
    "serial": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "ray": [
        "hydra/launcher=ray",
        "hydra.launcher.ray.init.address=local",  # a new local cluster, even where one is running
        "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "+hydra.launcher.ray.init._node_ip_address=127.0.0.1",
    ],
    # Ray on a GPU machine (with --extra device=cuda): one GPU per job, Ray sets CUDA_VISIBLE_DEVICES
    "ray_gpu": [
        "hydra/launcher=ray",
        "hydra.launcher.ray.init.address=local",
        "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "+hydra.launcher.ray.init._node_ip_address=127.0.0.1",
        "+hydra.launcher.ray.remote.num_gpus=1",
    ],
    # the cluster workflow (conf/hydra/launcher/ray_cluster.yaml): a head started once with `ray start
    # --head` (untimed, like a cluster that is already up), each sweep joins it
    "ray_cluster": [
        "hydra/launcher=ray_cluster",
        "hydra.launcher.ray.remote.num_gpus=0",
        "hydra.launcher.ray.remote.num_cpus=1",
    ],
}


EXTRA: list[str] = []  # --extra: more overrides for every sweep


def grid(n: int, steps: int) -> list[str]:
    return [
        *EXTRA,
        "attack=pgd",
        f"attack.steps={steps}",
        "attack.eps=0.1,0.2,0.3",
        "seed=0,1,2,3",
        f"n_samples={n}",
        "logger=none",
        "progress=false",
    ]


def fragility(args: list[str], log: Path, env_extra: dict | None = None, background: bool = False):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "RAY_DEDUP_LOGS": "0", **(env_extra or {})}
    f = open(log, "w")  # noqa: SIM115 - closed by the caller's wait (or the process end)
    p = subprocess.Popen([*FRAGILITY, *args], stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    if background:
        return p
    rc = p.wait()
    f.close()
    return rc


def count_rows(target: str) -> dict:
    """Rows in the store: done / failed runs, distinct hashes, samples per run."""
    store = ResultStore(target)
    with store.engine.connect() as c:
        runs = c.exec_driver_sql("SELECT config_hash, status FROM runs").all()
        devices = sorted(d for (d,) in c.exec_driver_sql("SELECT DISTINCT device FROM runs").all())
        per_run = dict(c.exec_driver_sql("SELECT config_hash, COUNT(*) FROM samples GROUP BY config_hash").all())
    done = [h for h, s in runs if s == "done"]
    return {
        "runs": len(runs),
        "distinct": len({h for h, _ in runs}),
        "done": len(done),
        "failed": sum(s == "failed" for _, s in runs),
        "samples": sorted({per_run.get(h, 0) for h in done}),
        "devices": devices,
    }


class RayHead:
    """``ray start --head`` on loopback (2 CPUs) for the ``ray_cluster`` rows; stopped at the end."""

    def __init__(self, out: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
        self.log = open(out / "ray-head.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", f"--port={self.port}", *HEAD_FLAGS],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.5)
        time.sleep(3)  # the raylet registers after the GCS port opens

    @property
    def overrides(self) -> list[str]:
        return [f"hydra.launcher.ray.init.address=127.0.0.1:{self.port}"]

    @property
    def env(self) -> dict[str, str]:
        # Ray enables token authentication on the clusters it starts; a driver that names the address
        # (rather than address=auto) sends the token (~/.ray/auth_token) only in token mode
        return {"RAY_AUTH_MODE": "token"}

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def timing(out: Path, n: int, steps: int, repeats: int, launchers: list[str]) -> list[dict]:
    rows = []
    for rep in range(repeats):
        for name in launchers:
            if name != "ray_cluster":
                rows.append(timed(out, n, steps, name, rep, [], {}))
                continue
            head = RayHead(out)  # up before the clock starts, as a cluster would be; down after it stops
            try:
                rows.append(timed(out, n, steps, name, rep, head.overrides, head.env))
            finally:
                head.stop()
    return rows


def timed(out: Path, n: int, steps: int, name: str, rep: int, extra: list[str], env: dict) -> dict:
    res = out / f"timing-{name}-{rep}"
    shutil.rmtree(res, ignore_errors=True)
    t0 = time.perf_counter()
    rc = fragility(["-m", f"results_dir={res}", *grid(n, steps), *LAUNCHERS[name], *extra], out / f"timing-{name}-{rep}.log", env)
    wall = time.perf_counter() - t0
    row = {"launcher": name, "repeat": rep, "rc": rc, "wall_s": round(wall, 1), **count_rows(str(res))}
    print(json.dumps(row), flush=True)
    return row


def compare_pg_sqlite(out: Path, n: int, steps: int, pg_url: str) -> dict:
    lite = out / "pg-vs-sqlite-sqlite"
    shutil.rmtree(lite, ignore_errors=True)
    rc_lite = fragility(["-m", f"results_dir={lite}", *grid(n, steps), *LAUNCHERS["joblib"]], out / "pg-vs-sqlite-sqlite.log")
    rc_pg = fragility(
        ["-m", f"results_dir={out / 'pg-vs-sqlite-pg'}", f"results_db={pg_url}", *grid(n, steps), *LAUNCHERS["joblib"]],
        out / "pg-vs-sqlite-pg.log",
    )
    a, b = ResultStore(str(lite)), ResultStore(pg_url)
    ra, rb = {r.config_hash: r for r in a.records()}, {r.config_hash: r for r in b.records()}
    metrics = ["n", "clean_acc", "robust_acc", "n_attacked", "success_rate", "mean_queries", "mean_linf", "mean_l2"]
    diff = 0.0
    for h in set(ra) & set(rb):
        for m in metrics:
            x, y = getattr(ra[h], m), getattr(rb[h], m)
            if not (isinstance(x, float) and math.isnan(x) and math.isnan(y)):
                diff = max(diff, abs(float(x) - float(y)))
    cols = ["i", "sample_id", "label", "clean_pred", "adv_pred", "success", "queries"]
    same_samples = all(a.samples(h)[cols].equals(b.samples(h)[cols]) for h in set(ra) & set(rb))
    row = {
        "rc_sqlite": rc_lite,
        "rc_postgres": rc_pg,
        "sqlite_rows": len(ra),
        "postgres_rows": len(rb),
        "same_hashes": set(ra) == set(rb),
        "max_metric_diff": diff,
        "same_samples": same_samples,
        "sqlite": count_rows(str(lite)),
        "postgres": count_rows(pg_url),
    }
    print(json.dumps(row), flush=True)
    return row


def _ray_job_pids() -> list[int]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "ray::_run_job" in line]


def ray_kill(out: Path, n: int, steps: int) -> dict:
    res = out / "ray-kill"
    shutil.rmtree(res, ignore_errors=True)
    args = ["-m", f"results_dir={res}", *grid(n, steps), *LAUNCHERS["ray"], "+hydra.launcher.ray.remote.max_retries=0"]
    p = fragility(args, out / "ray-kill-1.log", background=True)
    killed, t0 = None, time.time()
    while p.poll() is None and time.time() - t0 < 1800:
        done = count_rows(str(res))["done"] if (res / "results.sqlite").is_file() else 0
        pids = _ray_job_pids()
        if done >= 3 and pids:  # a few rows in, a job in flight: kill its worker
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.5)
    rc1 = p.wait()
    after_kill = count_rows(str(res))
    rc2 = fragility(args, out / "ray-kill-2.log")
    after_rerun = count_rows(str(res))
    row = {
        "killed_pid": killed,
        "rc_killed_sweep": rc1,
        "after_kill": after_kill,
        "rc_rerun": rc2,
        "after_rerun": after_rerun,
        "rows_lost": 12 - after_rerun["done"],
        "rows_duplicated": after_rerun["runs"] - after_rerun["distinct"],
        "samples_per_run": after_rerun["samples"],
    }
    print(json.dumps(row), flush=True)
    return row


def start_postgres() -> tuple[str, callable]:
    found = shutil.which("initdb")
    cands = ([str(Path(found).resolve().parent)] if found else []) + sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    bindir = next(Path(d) for d in cands if (Path(d) / "initdb").is_file())
    data = Path(tempfile.mkdtemp(prefix="fragility-bench-pg-"))  # under /tmp: the postgres user must reach it
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", opts, "-l", str(data / "log"), "-w", "start"], check=True
    )

    def stop():
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)

    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench_sweep"))
    ap.add_argument("--n", type=int, default=500, help="test images per run")
    ap.add_argument("--steps", type=int, default=20, help="PGD steps in the timed sweeps")
    ap.add_argument("--light-steps", type=int, default=10, help="PGD steps in the PostgreSQL and Ray-kill sweeps")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--parts", default="timing,postgres,raykill")
    ap.add_argument("--launchers", default="serial,joblib,ray,ray_cluster")
    ap.add_argument("--pg-url", default=os.environ.get("FRAGILITY_TEST_PG_URL"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job, every launcher (FRAGILITY_THREADS)")
    ap.add_argument("--extra", nargs="*", default=["escalate=false"], help="overrides added to every sweep")
    args = ap.parse_args()
    os.environ["FRAGILITY_THREADS"] = str(args.threads)
    EXTRA[:] = args.extra
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    # train the digits CNN into the cache once, outside every timing
    fragility([f"results_dir={args.out / 'warmup'}", "n_samples=8", "logger=none", "progress=false"], args.out / "warmup.log")
    report: dict = {
        "n": args.n,
        "steps": args.steps,
        "light_steps": args.light_steps,
        "threads": args.threads,
        "extra": args.extra,
    }
    report["cpus"], report["load_avg_start"] = len(os.sched_getaffinity(0)), os.getloadavg()
    if "timing" in parts:
        report["timing"] = timing(args.out, args.n, args.steps, args.repeats, args.launchers.split(","))
    if "postgres" in parts:
        url, stop = (args.pg_url, lambda: None) if args.pg_url else start_postgres()
        try:
            with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as c:  # a fresh database for the run
                c.exec_driver_sql("DROP DATABASE IF EXISTS bench_sweep WITH (FORCE)")
                c.exec_driver_sql("CREATE DATABASE bench_sweep")
            db = sa.make_url(url).set(database="bench_sweep").render_as_string(hide_password=False)
            report["postgres"] = compare_pg_sqlite(args.out, args.n, args.light_steps, db)
        finally:
            stop()
    if "raykill" in parts:
        report["raykill"] = ray_kill(args.out, args.n, args.light_steps)
    report["load_avg_end"] = os.getloadavg()
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"report: {args.out / 'report.json'}")


if __name__ == "__main__":
    main()
