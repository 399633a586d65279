"""Console entry points: ``fragility`` (Hydra app) and ``fragility-leaderboard``.

With no arguments at all, ``fragility`` runs the embedded demo, the same as
``fragility -m attack=fgsm,pgd``: digits + small CNN, FGSM and PGD, leaderboard printed.
Errors a user can fix are printed as one line (``fragility: error: ...``) with exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from fragility.benchmarks.apps import fail, gate, interruptible
from fragility.errors import FragilityError

DEMO_ARGS = ["-m", "attack=fgsm,pgd"]


def _fail(msg: str) -> None:
    fail("fragility", msg)


@hydra.main(config_path="pkg://fragility.conf", config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    from fragility.benchmarks.runner import run
    from fragility.benchmarks.sweep import in_multirun, run_sweep_job

    logging.getLogger("fragility").setLevel(logging.INFO)
    if in_multirun():  # any launcher: a failed job is recorded and reported, the sweep goes on (benchmarks/sweep.py)
        return run_sweep_job(cfg, run)
    try:
        run(cfg)
    except FragilityError as e:
        _fail(str(e))
    except OmegaConfBaseException as e:
        _fail(str(e).splitlines()[0])
    from fragility.benchmarks.leaderboard import terminal_table
    from fragility.benchmarks.store import ResultStore

    print(terminal_table(ResultStore.for_config(cfg).records()))
    print(f"[fragility] leaderboards written to {cfg.results_dir}/leaderboard.{{csv,md,html}}")


RERUN = " (each finished run is stored whole); rerun the same command to run only what is missing"


@interruptible("fragility", RERUN)
def main() -> None:
    if len(sys.argv) == 1:
        sys.argv += DEMO_ARGS
    gate("fragility", "config", sys.argv[1:])  # one line and exit 2 before Hydra acts (benchmarks/apps.py)
    if {"-m", "--multirun"} & set(sys.argv[1:]) and os.environ.get("HYDRA_FULL_ERROR") != "1":
        _sweep()
    else:
        _app()


def _sweep() -> None:
    """A sweep. Its jobs contain their own failures (benchmarks/sweep.py); what fails outside them
    (a launcher whose worker process died, a later job's config that Hydra cannot compose) is one
    line here instead of Hydra's traceback, and the rows already written stay as they are."""
    from hydra.errors import HydraException

    from fragility.benchmarks.sweep import one_line

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own report
    try:
        _app()
    except (FragilityError, HydraException, OmegaConfBaseException) as e:
        _fail(one_line(e))
    except Exception as e:  # the launcher's own failure: a killed worker, a lost cluster
        print(
            f"fragility: error: the sweep stopped: {one_line(e)}. The rows already written are kept; "
            "rerun the same command to run only what is missing.",
            file=sys.stderr,
        )
        sys.exit(1)


@hydra.main(config_path="pkg://fragility.conf", config_name="leaderboard", version_base="1.3")
def _leaderboard_app(cfg: DictConfig) -> None:
    from pathlib import Path

    from fragility.benchmarks.leaderboard import terminal_table, write_leaderboards
    from fragility.benchmarks.store import DB_NAME, ResultStore, merge_stores
    from fragility.benchmarks.worst_case import samples_for

    db = cfg.get("results_db")
    if not db and not (Path(cfg.results_dir) / DB_NAME).is_file() and not cfg.get("merge_from"):
        fail("fragility-leaderboard", f"no results store in {cfg.results_dir} (expected {DB_NAME}); run fragility first")
    try:
        store = ResultStore(db or cfg.results_dir, read_only=not cfg.get("merge_from"))  # a read-only store still renders
        if cfg.get("check"):  # fragility-leaderboard --check: the full integrity check, not only the quick one on open
            print(f"[fragility] integrity check of {store.path}: {store.check()}")
        if cfg.get("merge_from"):  # e.g. a laptop's results dir into the team's database; rows keyed by config hash
            copied, present = merge_stores(ResultStore(cfg.merge_from, read_only=True), store)  # never creates it
            print(f"[fragility] merged {cfg.merge_from} into {store.path}: {copied} runs copied, {present} already there")
        records = store.records()
    except FragilityError as e:
        fail("fragility-leaderboard", str(e))
    try:
        write_leaderboards(records, cfg.results_dir, samples=samples_for(store, records))
        where = f"leaderboards written to {cfg.results_dir}/leaderboard.{{csv,md,html}}"
    except OSError as e:  # a read-only results folder: the table is still shown
        where = f"leaderboard files not written ({e.strerror or e})"
    print(terminal_table(records))
    print(f"[fragility] {len(records)} runs; {where}")


@interruptible("fragility-leaderboard")
def leaderboard_main() -> None:
    # ``--check`` reads as a flag; Hydra sees it as the override check=true
    sys.argv = [("check=true" if a == "--check" else a) for a in sys.argv]
    gate("fragility-leaderboard", "leaderboard", sys.argv[1:], read_only=True)
    _leaderboard_app()
