"""Sweeps through Hydra's launchers (docs/sweeps.md): every row exactly once, a failing job recorded
while the others finish, a rerun that completes only what is missing, the experiment grid, and the
per-job resources. The Ray test needs the ray extra (pip install -e '.[ray]') and skips without it."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from itertools import product
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from conftest import REPO
from omegaconf import OmegaConf
from records import make_run_record

import fragility.benchmarks.sweep as sweep_module
from fragility.benchmarks.provenance import config_hash, now
from fragility.benchmarks.resources import job_resources, launcher_share, plan_threads
from fragility.benchmarks.store import ResultStore
from fragility.benchmarks.sweep import finished_line, progress_line, read_progress, run_sweep_job, sweep_size

FRAGILITY = [sys.executable, "-c", "from fragility.benchmarks.cli import main; main()"]
# a 2-CPU Ray head on loopback for the ray_cluster test
HEAD_FLAGS = ["--num-cpus=2", "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
# 4 jobs: 2 good, 2 that fail at run time (n_samples=0 is a ConfigError raised inside the job)
GRID = ["attack=fgsm", "attack.eps=0.1,0.2", "n_samples=16,0", "logger=none", "progress=false"]


def sweep(results, *extra: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "FRAGILITY_THREADS": "1", "RAY_DEDUP_LOGS": "0", **(env or {})}
    return subprocess.run(
        [*FRAGILITY, "-m", f"results_dir={results}", *GRID, *extra], capture_output=True, text=True, env=env, timeout=timeout
    )


def rows(results) -> dict[str, tuple[str, int]]:
    """config_hash -> (status, number of samples), read straight from the database."""
    store = ResultStore(results)
    with store.engine.connect() as c:
        runs = c.exec_driver_sql("SELECT config_hash, status FROM runs").all()
        counts = dict(c.exec_driver_sql("SELECT config_hash, COUNT(*) FROM samples GROUP BY config_hash").all())
    assert len(runs) == len({h for h, _ in runs})
    return {h: (s, counts.get(h, 0)) for h, s in runs}


def check_contained(p: subprocess.CompletedProcess, results) -> dict[str, tuple[str, int]]:
    assert p.returncode == 1, p.stderr[-2000:]
    errors = [ln for ln in p.stderr.splitlines() if "fragility: error: job" in ln]  # Ray prefixes worker lines
    assert len(errors) == 2 and all("n_samples must be positive" in ln for ln in errors), p.stderr[-3000:]
    assert "fragility: error: 2 of 4 jobs failed" in p.stderr
    assert "Traceback" not in p.stderr
    got = rows(results)  # a job may write more than one row (an adaptive or escalated variant), each once
    assert sorted(v for v in got.values() if v[0] == "failed") == [("failed", 0), ("failed", 0)]
    done = [v for v in got.values() if v[0] == "done"]
    assert len(done) >= 2 and all(k == 16 for _, k in done)
    return got


def test_joblib_sweep_contains_failures_and_rerun_completes_only_what_is_missing(tmp_path, digits_model):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the parallel extra: pip install -e '.[parallel]'")
    results = tmp_path / "results"
    p = sweep(results, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    first = check_contained(p, results)
    assert "[fragility] sweep finished in " in p.stdout and ": 4 jobs (2 done, 0 skipped, 2 failed)" in p.stdout
    # a job that crashed before writing: its row is missing; the rerun runs it and only it
    store = ResultStore(results)
    lost = next(r.config_hash for r in store.records() if r.variant == "standard")
    with store.engine.begin() as c:
        c.execute(sa.text("DELETE FROM runs WHERE config_hash = :h"), {"h": lost})
        c.execute(sa.text("DELETE FROM samples WHERE config_hash = :h"), {"h": lost})
    again = sweep(results, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert check_contained(again, results) == first
    assert "(1 done, 1 skipped, 2 failed)" in again.stdout


def test_ray_sweep_writes_every_row_once(tmp_path, digits_model):
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        pytest.skip("needs the ray extra: pip install -e '.[ray]' (Ray and hydra-ray-launcher)")
    results = tmp_path / "results"
    ray_local = [
        "hydra/launcher=ray",
        "hydra.launcher.ray.init.address=local",  # a new cluster, even while another test's is up
        "+hydra.launcher.ray.init.num_cpus=2",
        "+hydra.launcher.ray.init.include_dashboard=false",
        "+hydra.launcher.ray.init._node_ip_address=127.0.0.1",  # a local cluster on loopback only
    ]
    check_contained(sweep(results, *ray_local, timeout=400), results)


def test_ray_cluster_preset_joins_a_running_cluster(tmp_path, digits_model):
    """``hydra/launcher=ray_cluster`` (conf/hydra/launcher/ray_cluster.yaml) joins a cluster started
    with ``ray start --head``, here one on loopback, stopped (its process group) at the end."""
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        pytest.skip("needs the ray extra: pip install -e '.[ray]' (Ray and hydra-ray-launcher)")
    import secrets
    import shutil
    import signal
    import socket
    import tempfile
    import time

    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray's clusters use token authentication. Left to itself, a first head on a fresh machine writes
    # ~/.ray/auth_token after its port already answers, and a driver that starts in between finds no
    # token (seen once in a full run): head and driver get the same token instead
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", *HEAD_FLAGS],
        env={**os.environ, **auth},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the GCS port answers once the head is up
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        results = tmp_path / "results"
        preset = [
            "hydra/launcher=ray_cluster",
            f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
            "hydra.launcher.ray.remote.num_gpus=0",  # the preset asks one GPU per job; this machine has none
            "hydra.launcher.ray.remote.num_cpus=1",
        ]
        # a driver given an address (not address=auto, which finds the newest cluster on this machine)
        # sends its token only in token mode
        check_contained(sweep(results, *preset, timeout=400, env=auth), results)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        # `ray start` leaves its address in /tmp/ray/ray_current_cluster, and `ray stop` (which would
        # also stop a user's own cluster) is what removes it; left there, every later plain ray.init()
        # on this machine (hydra/launcher=ray) would try to join the dead head and time out
        address_file = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if address_file.is_file() and address_file.read_text().strip().endswith(f":{port}"):
            address_file.unlink()


# -- the experiment grid --------------------------------------------------------------------------


def test_cifar10_linf_expands_to_the_grid(monkeypatch):
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_module("fragility.conf", version_base="1.3"):
        cfg = compose("config", ["+experiment=cifar10_linf"], return_hydra_config=True)
    attacks = ["fgsm", "pgd"] + (["autoattack"] if (REPO / "conf" / "attack" / "autoattack.yaml").is_file() else [])
    params = {k: str(v) for k, v in cfg.hydra.sweeper.params.items()}
    assert params["attack"].split(",") == attacks
    jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()]), None)[
        0
    ]
    got = {tuple(sorted(j)) for j in jobs}
    want = product(["20", "32"], ["none", "jpeg", "bit_depth"], attacks, ["2/255", "4/255", "8/255"])
    assert got == {tuple(sorted([f"model.depth={d}", f"defense={df}", f"attack={a}", f"attack.eps={e}"])) for d, df, a, e in want}
    assert sweep_size(cfg) == len(got) == 2 * 3 * len(attacks) * 3
    # each depth finds its own checkpoint (a sweep cannot pair keys; the experiment looks it up by depth)
    monkeypatch.setenv("FRAGILITY_SHARED", "/shared")
    for depth, name in ((20, "resnet20-12fca82f.th"), (32, "resnet32-d509ac18.th")):
        for k, v in cfg.hydra.job.env_set.items():
            monkeypatch.setenv(k, str(v))
        cfg.model.depth = depth
        assert cfg.model.checkpoint == f"/shared/models/cifar10/{name}"
    assert cfg.dataset.path == "/shared/data/cifar10/test.npz" and cfg.dataset._target_.endswith("Npz")


def test_sweep_size_counts_command_line_sweeps():
    from hydra import compose, initialize_config_module

    with initialize_config_module("fragility.conf", version_base="1.3"):
        cfg = compose("config", ["attack=fgsm"], return_hydra_config=True)
    cfg.hydra.overrides.task = ["attack=fgsm,pgd", "seed=0,1,2"]
    assert sweep_size(cfg) == 6


# -- progress and resources -----------------------------------------------------------------------


def test_a_job_that_only_finished_an_escalation_counts_as_done(tmp_path, cfg_factory, monkeypatch):
    """The rerun of a job cut off between its flagged row and the escalation runs the escalation and
    may return the old flagged row (when the escalation found no more); it did work: not skipped."""
    cfg = cfg_factory("attack=pgd")
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    h = config_hash(resolved)
    store = ResultStore.for_config(cfg)
    flagged = make_run_record(config_hash=h, flags="saturated 30/32", timestamp="2026-01-01T00:00:00+00:00")
    store.write(flagged)
    hc = SimpleNamespace(
        job=SimpleNamespace(num=0), overrides=SimpleNamespace(task=["attack=pgd"]), sweep=SimpleNamespace(dir=str(tmp_path))
    )
    monkeypatch.setattr(sweep_module.HydraConfig, "get", staticmethod(lambda: hc))
    monkeypatch.setattr(sweep_module, "job_resources", lambda device: contextlib.nullcontext())

    def finish_escalation(c):
        blob = json.dumps({"escalated_from": h})
        store.write(make_run_record(config_hash="e" * 16, variant="escalated", config_json=blob, timestamp=now()))
        return flagged

    assert run_sweep_job(cfg, lambda c: flagged) == "skipped"  # nothing new: skipped
    assert run_sweep_job(cfg, finish_escalation) == "done"
    monkeypatch.setattr(sweep_module, "now", lambda: "2099-01-01T00:00:00+00:00")
    assert run_sweep_job(cfg, lambda c: flagged) == "skipped"  # an older escalation is not this job's


@pytest.mark.parametrize(("attack", "adaptive_failed"), [("square", False), ("fgsm", True)])
def test_a_failure_after_the_standard_row_names_only_a_variant_the_runner_writes(
    cfg_factory, monkeypatch, attack, adaptive_failed
):
    """Behind a BPDA defense the runner writes an adaptive row only for attacks that use gradients.
    A job failing after its standard row records the adaptive variant as failed for FGSM; for
    Square, which has none, nothing more is written (no phantom failed row on the leaderboard)."""
    cfg = cfg_factory(f"attack={attack}", "defense=jpeg")
    hc = SimpleNamespace(runtime=SimpleNamespace(choices={"defense": "jpeg", "attack": attack}))
    monkeypatch.setattr(sweep_module.HydraConfig, "get", staticmethod(lambda: hc))
    resolved = sweep_module._keyed(OmegaConf.to_container(cfg, resolve=True))
    store = ResultStore.for_config(cfg)
    store.write(make_run_record(config_hash=config_hash(resolved)))
    note = sweep_module.record_failure(cfg, "RuntimeError: out of memory")
    failed = [r for r in rows(cfg.results_dir).values() if r[0] == "failed"]
    assert (len(failed) == 1) is adaptive_failed
    assert (note == "") is adaptive_failed


def test_progress_line_counts_and_estimates(tmp_path):
    (tmp_path / "sweep_progress.jsonl").write_text(
        '{"event": "start", "total": 10, "time": 100.0}\n'
        '{"event": "job", "num": 0, "status": "done", "seconds": 5}\n'
        '{"event": "job", "num": 1, "status": "failed", "seconds": 1}\n'
        '{"event": "job", "num": 1, "status": "done", "seconds": 4}\n'  # retried (Ray): counts once, as it ended
        '{"event": "job", "num": 2, "status": "skipped", "seconds": 0}\n'
        '{"event": "job", "num": 3, "sta'  # a line another job is still writing
    )
    p = read_progress(tmp_path)
    assert (p["done"], p["skipped"], p["failed"]) == (2, 1, 0)
    assert progress_line(p, now_s=130.0) == "[fragility] sweep: 3/10 (2 done, 1 skipped, 0 failed), 7 remaining, ~1m10s left"
    assert finished_line(p, now_s=130.0) == "[fragility] sweep finished in 30s: 3 of 10 jobs (2 done, 1 skipped, 0 failed)"


def test_threads_share_the_cores(monkeypatch):
    monkeypatch.delenv("FRAGILITY_THREADS", raising=False)
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}
    assert launcher_share(joblib, 16) == (4, None) and plan_threads(joblib, cores=16) == 4
    assert plan_threads({**joblib, "n_jobs": -1}, cores=16) == 1  # joblib's -1: one job per core
    ray = {"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher", "ray": {"remote": {"num_cpus": 3}}}
    assert plan_threads(ray, cores=16) == 3 and plan_threads(ray, cores=2) == 2
    slurm = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 8}
    assert plan_threads(slurm, cores=8) == 8
    assert plan_threads(None, cores=6) == 6  # the serial launcher: one job, every core
    monkeypatch.setenv("FRAGILITY_THREADS", "2")
    assert plan_threads(joblib, cores=16) == 2


def test_job_resources_sets_threads_and_cpu_device(monkeypatch):
    import torch

    monkeypatch.delenv("FRAGILITY_THREADS", raising=False)
    before = torch.get_num_threads()
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 1}
    try:
        with job_resources("cpu", launcher=joblib) as res:
            assert res.device == "cpu" and res.gpu is None and torch.get_num_threads() == res.threads >= 1
    finally:
        torch.set_num_threads(before)


def test_gpu_claims_are_exclusive(tmp_path, monkeypatch):
    """Two jobs that see the same GPUs never get the same one (the lock, not the job number)."""
    from fragility.benchmarks import resources

    monkeypatch.setattr(resources, "LOCK_DIR", tmp_path)
    with resources._claim_gpu(["0", "1"]) as a:
        code = (
            "import sys; from pathlib import Path; from fragility.benchmarks import resources as r\n"
            f"r.LOCK_DIR = Path({str(tmp_path)!r})\n"
            "with r._claim_gpu(['0', '1']) as i: print(i)\n"
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert (a, int(other.stdout)) == (0, 1)


def test_a_killed_worker_is_one_line_and_the_rerun_completes(tmp_path, digits_model):
    """A joblib worker killed mid-sweep (SIGKILL): one line, exit 1, the rows written stay; the rerun
    runs only the missing jobs, and every row is there once."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the parallel extra: pip install -e '.[parallel]'")
    import signal
    import time

    results = tmp_path / "results"
    args = [*FRAGILITY, "-m", f"results_dir={results}", "attack=pgd", "attack.eps=0.1,0.2,0.3", "seed=0,1"]
    args += [
        "n_samples=200",
        "logger=none",
        "progress=false",
        "escalate=false",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "FRAGILITY_THREADS": "1"}
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed, t0 = None, time.time()
    while killed is None and p.poll() is None and time.time() - t0 < 240:
        ps = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout.splitlines()
        workers = [int(ln.split()[0]) for ln in ps if int(ln.split()[1]) == p.pid and "popen_loky" in ln]
        if workers:
            time.sleep(1.0)  # inside its imports or its first job
            os.kill(workers[0], signal.SIGKILL)
            killed = workers[0]
        time.sleep(0.1)
    _out, err = p.communicate(timeout=240)
    assert killed is not None, "no joblib worker was seen"
    assert p.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("fragility: error:")]
    assert len(lines) == 1 and "the sweep stopped" in lines[0] and "rerun the same command" in lines[0]
    before = rows(results) if (results / "results.sqlite").is_file() else {}
    assert all(v == ("done", 200) for v in before.values())
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    after = rows(results)
    assert len(after) == 6 and all(v == ("done", 200) for v in after.values())
    assert f"({6 - len(before)} done, {len(before)} skipped, 0 failed)" in again.stdout
