"""Console entry points: ``fragility`` (Hydra app) and ``fragility-leaderboard``.

With no arguments at all, ``fragility`` runs the embedded demo, the same as
``fragility -m attack=fgsm,pgd``: digits + small CNN, FGSM and PGD, leaderboard printed.
Errors a user can fix are printed as one line (``fragility: error: ...``) with exit code 2.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from fragility.benchmarks.config import GROUPS, check_group_choice
from fragility.errors import FragilityError

DEMO_ARGS = ["-m", "attack=fgsm,pgd"]


def _fail(msg: str) -> None:
    print(f"fragility: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _precheck(argv: list[str]) -> None:
    """Unknown config-group names get one line listing the valid ones (before Hydra's
    multi-line composition error)."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        if key in GROUPS and value and not any(ch in value for ch in "()[]{}$"):
            for choice in value.split(","):
                check_group_choice(key, choice.strip())


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


def main() -> None:
    if len(sys.argv) == 1:
        sys.argv += DEMO_ARGS
    try:
        _precheck(sys.argv[1:])
    except FragilityError as e:
        _fail(str(e))
    _app()


@hydra.main(config_path="pkg://fragility.conf", config_name="leaderboard", version_base="1.3")
def _leaderboard_app(cfg: DictConfig) -> None:
    from pathlib import Path

    from fragility.benchmarks.leaderboard import terminal_table, write_leaderboards
    from fragility.benchmarks.store import DB_NAME, ResultStore, merge_stores

    db = cfg.get("results_db")
    if not db and not (Path(cfg.results_dir) / DB_NAME).is_file() and not cfg.get("merge_from"):
        _fail(f"no results store in {cfg.results_dir} (expected {DB_NAME}); run fragility first")
    try:
        store = ResultStore(db or cfg.results_dir)
        if cfg.get("merge_from"):  # e.g. a laptop's results dir into the team's database; rows keyed by config hash
            copied, present = merge_stores(ResultStore(cfg.merge_from), store)
            print(f"[fragility] merged {cfg.merge_from} into {store.path}: {copied} runs copied, {present} already there")
        records = store.records()
    except FragilityError as e:
        _fail(str(e))
    write_leaderboards(records, cfg.results_dir)
    print(terminal_table(records))
    print(f"[fragility] {len(records)} runs; leaderboards written to {cfg.results_dir}/leaderboard.{{csv,md,html}}")


def leaderboard_main() -> None:
    _leaderboard_app()
