"""One job of a Hydra sweep, contained, and the sweep's progress line.

Under every launcher (serial, joblib, Ray, submitit) a job runs through :func:`run_sweep_job`:

- it takes its resources (:mod:`fragility.benchmarks.resources`: one GPU, cores / parallel jobs threads);
- a job that raises is recorded in the store as a ``failed`` row (its config and a one-line error;
  never a result), reported in one line, and the sweep goes on. A rerun skips what is done and
  retries what failed or never finished, so it completes only what is missing;
- it appends its outcome to ``<sweep dir>/sweep_progress.jsonl`` and prints the progress line
  ``[fragility] sweep: 7/12 (5 done, 1 skipped, 1 failed), 5 remaining, ~1m40s left``.

:class:`SweepProgress` (a Hydra callback, listed in ``conf/config.yaml``) writes the sweep's size at
the start and, at the end, prints the summary and exits non-zero when any job failed.
The progress file lives in the sweep directory: on a cluster whose nodes do not share it (a Ray
cluster without a shared results_dir), each node's line counts the jobs it saw; the store always
has every row.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fragility.benchmarks.provenance import config_hash, now
from fragility.benchmarks.resources import job_resources
from fragility.errors import FragilityError

PROGRESS_FILE = "sweep_progress.jsonl"
STATUSES = ("done", "skipped", "failed")


def in_multirun() -> bool:
    try:
        return str(HydraConfig.get().mode) == "RunMode.MULTIRUN"
    except ValueError:
        return False


def one_line(e: BaseException) -> str:
    """The first line of an error; a user-fixable FragilityError without its class name."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    return text.splitlines()[0] if isinstance(e, FragilityError) else f"{type(e).__name__}: {text.splitlines()[0]}"


def run_sweep_job(cfg: DictConfig, run) -> str:
    """Run one job of a sweep with ``run(cfg)``; returns ``done``, ``skipped`` or ``failed``.
    Failures are contained: recorded, reported in one line, never raised."""
    hc = HydraConfig.get()
    label = f"job {hc.job.num} ({' '.join(hc.overrides.task)})"
    start, t0 = now(), time.perf_counter()
    try:
        was_done = _standard_done(cfg)
        with job_resources(str(cfg.get("device", "auto"))):
            rec = run(cfg)
        status = "skipped" if was_done and not _wrote_since(cfg, rec, start) else "done"
    except Exception as e:  # containment: whatever one job raises, the sweep goes on
        status, msg = "failed", one_line(e)
        where = record_failure(cfg, msg)
        print(f"fragility: error: {label}: {msg}{where}", file=sys.stderr, flush=True)
    line = job_finished(Path(hc.sweep.dir), int(hc.job.num), status, time.perf_counter() - t0, list(hc.overrides.task))
    if line:
        print(line, flush=True)
    return status


def _standard_done(cfg: DictConfig) -> bool:
    if cfg.get("force", False):
        return False
    from fragility.benchmarks.store import ResultStore

    return ResultStore.for_config(cfg).has(config_hash(_keyed(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))))


def _keyed(resolved: dict) -> dict:
    """The resolved config as the runner hashes it: with the content of its input files."""
    from fragility.benchmarks.inputs import with_inputs

    return with_inputs(resolved)


def _wrote_since(cfg: DictConfig, rec, start: str) -> bool:
    """Whether the job wrote a row: the one ``run`` returned is new, or an escalation of the
    configuration's stored rows is (a rerun that only finished an interrupted escalation returns
    the flagged row when the escalation found nothing more, yet it did work)."""
    if rec is None or rec.timestamp >= start:
        return True
    from fragility.benchmarks.runner import escalated_from, variant_hash
    from fragility.benchmarks.store import ResultStore

    resolved = _keyed(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    hashes = {variant_hash(resolved, v) for v in ("standard", "adaptive")}
    return any(r.timestamp >= start for r in escalated_from(ResultStore.for_config(cfg), hashes))


def record_failure(cfg: DictConfig, msg: str) -> str:
    """Write the failed row; returns a note for the one-line report (empty when written)."""
    from fragility.benchmarks.store import ResultStore

    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # the failure may be the config itself (a missing value, a bad interpolation)
        resolved = OmegaConf.to_container(cfg, resolve=False)
    resolved = _keyed(resolved)  # the key a successful rerun of the job will have
    try:
        choices = dict(HydraConfig.get().runtime.choices)
    except ValueError:
        choices = {}
    from fragility.benchmarks.runner import attack_needs_gradients

    defense = str(choices.get("defense") or "none")
    # the variants the runner would write: a score-only attack has no adaptive one to fail
    variants = ["standard"] + (["adaptive"] if defense != "none" and attack_needs_gradients(resolved) else [])
    fields = {k: str(choices[k]) for k in ("model", "dataset", "attack") if choices.get(k)}
    try:
        store = ResultStore.for_config(cfg)
        for v in variants:
            h = config_hash(resolved) if v == "standard" else config_hash({**resolved, "variant": v})
            blob = json.dumps(resolved, default=str)
            if store.write_failure(h, msg, blob, timestamp=now(), defense=defense, variant=v, **fields):
                return ""
        return " (its result rows were already written)"
    except Exception as e:  # the store itself may be what failed
        return f" (and the failure could not be recorded: {one_line(e)})"


# -- progress -------------------------------------------------------------------------------------


def _append(path: Path, event: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # one short line per write: O_APPEND keeps concurrent lines whole
        f.write(json.dumps(event) + "\n")


def read_progress(sweep_dir: Path) -> dict[str, Any]:
    """Counts of a sweep so far: total (None if unknown), done/skipped/failed, start time."""
    out: dict[str, Any] = {"total": None, "start": None, **dict.fromkeys(STATUSES, 0), "jobs": {}}
    path = Path(sweep_dir) / PROGRESS_FILE
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line still being written by another job
        if ev.get("event") == "start":
            out["total"], out["start"] = ev.get("total"), ev.get("time")
        elif ev.get("event") == "job":
            out["jobs"][ev["num"]] = ev["status"]  # a retried job (Ray) counts once, as it ended last
    for s in out["jobs"].values():
        out[s] += 1
    return out


def progress_line(p: dict[str, Any], now_s: float | None = None) -> str:
    finished = sum(p[s] for s in STATUSES)
    counts = f"{p['done']} done, {p['skipped']} skipped, {p['failed']} failed"
    if p["total"] is None:
        return f"[fragility] sweep: {finished} finished ({counts})"
    remaining = max(0, p["total"] - finished)
    eta = ""
    if remaining and p["start"] and finished:
        left = ((now_s or time.time()) - p["start"]) / finished * remaining
        eta = f", ~{_duration(left)} left"
    return f"[fragility] sweep: {finished}/{p['total']} ({counts}), {remaining} remaining{eta}"


def finished_line(p: dict[str, Any], now_s: float | None = None) -> str:
    """The sweep's summary at its end (the last job's progress line already said "0 remaining")."""
    finished = sum(p[s] for s in STATUSES)
    took = f" in {_duration((now_s or time.time()) - p['start'])}" if p["start"] else ""
    counts = f"{p['done']} done, {p['skipped']} skipped, {p['failed']} failed"
    jobs = f"{finished} of {p['total']}" if p["total"] is not None and p["total"] != finished else f"{finished}"
    return f"[fragility] sweep finished{took}: {jobs} jobs ({counts})"


def job_finished(sweep_dir: Path, num: int, status: str, seconds: float, overrides: list[str]) -> str:
    event = {"event": "job", "num": num, "status": status, "seconds": round(seconds, 3), "time": time.time()}
    try:
        _append(Path(sweep_dir) / PROGRESS_FILE, {**event, "overrides": overrides})
        return progress_line(read_progress(sweep_dir))
    except OSError:  # progress is informational; the store has the rows
        return ""


def _duration(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs Hydra's basic sweeper will launch for this config (None for other sweepers)."""
    try:
        if "BasicSweeper" not in str(config.hydra.sweeper.get("_target_", "")):
            return None
        # Hydra's own expansion (the same calls BasicSweeper.sweep makes); private API, hence the guard.
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = config.hydra.sweeper.get("params") or {}
        args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
        parsed = OverridesParser.create().parse_overrides(args)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:
        return None


class SweepProgress(Callback):
    """Hydra callback: the sweep's size at the start; the summary and exit status at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        total = sweep_size(config)
        _append(sweep_dir / PROGRESS_FILE, {"event": "start", "total": total, "time": time.time()})
        print(
            f"[fragility] sweep of {total if total is not None else '?'} jobs; progress in {sweep_dir / PROGRESS_FILE}",
            flush=True,
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        p = read_progress(sweep_dir)
        print(finished_line(p), flush=True)
        _print_leaderboard(config)
        if p["failed"]:
            print(
                f"fragility: error: {p['failed']} of {sum(p[s] for s in STATUSES)} jobs failed (status='failed' rows in the "
                f"store; rerun the same command to retry them)",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(1)


def _print_leaderboard(config: DictConfig) -> None:
    """The sweep's leaderboard, once, at the end (jobs no longer print it each)."""
    from fragility.benchmarks.leaderboard import terminal_table
    from fragility.benchmarks.store import ResultStore

    try:
        target = config.get("results_db") or config.results_dir
        print(terminal_table(ResultStore(target).records()))
        print(f"[fragility] leaderboards written to {config.results_dir}/leaderboard.{{csv,md,html}}")
    except Exception as e:  # the store's own problems were reported by the jobs
        print(f"[fragility] no leaderboard: {one_line(e)}", file=sys.stderr)
