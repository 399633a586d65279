"""Console entry points: ``fragility`` (Hydra app) and ``fragility-leaderboard``.

With no arguments at all, ``fragility`` runs the embedded demo, the same as
``fragility -m attack=fgsm,pgd``: digits + small CNN, FGSM and PGD, leaderboard printed.
Errors a user can fix are printed as one line (``fragility: error: ...``) with exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from fragility.benchmarks.config import GROUPS, check_group_choice
from fragility.errors import ConfigError, FragilityError

DEMO_ARGS = ["-m", "attack=fgsm,pgd"]


def _fail(msg: str) -> None:
    print(f"fragility: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _precheck(argv: list[str]) -> None:
    """Overrides that Hydra's grammar rejects, and unknown config-group names, get one line (before
    Hydra's multi-line messages)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except OverrideParseException as e:
        raise ConfigError(f"cannot parse the override: {str(e).splitlines()[0]} (quote values with special characters)") from None
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


def _pregate(argv: list[str], config_name: str) -> None:
    """Compose the config the way Hydra is about to (first job of a sweep) and run the gate on
    it before Hydra acts: callbacks, logging factories, output folders
    (:func:`~fragility.benchmarks.config.check_hydra`) and every ``_target_``
    (:func:`~fragility.benchmarks.config.check_config`). Hydra's multi-line composition errors
    become one line here."""
    from hydra import compose, initialize_config_module
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from fragility.benchmarks.config import check_config, check_hydra, first_job_overrides

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.shell_completion or args.info:
        return
    overrides = first_job_overrides(list(args.overrides))
    if args.config_dir:
        overrides.append(f"hydra.searchpath=[file://{Path(args.config_dir).absolute()}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("fragility.conf", version_base="1.3"):
            cfg = compose(args.config_name or config_name, overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        text = str(e).strip()
        _fail(text.splitlines()[0] if text else type(e).__name__)
    finally:
        GlobalHydra.instance().clear()
    check_hydra(cfg)
    try:
        check_config(cfg)
    except FragilityError as e:
        if not str(e).startswith("cannot resolve"):
            raise
        # a value that only resolves inside the run (${hydra:...}); run() checks it again before any work


def main() -> None:
    if len(sys.argv) == 1:
        sys.argv += DEMO_ARGS
    try:
        _precheck(sys.argv[1:])
        _pregate(sys.argv[1:], "config")
    except FragilityError as e:
        _fail(str(e))
    _app()


@hydra.main(config_path="pkg://fragility.conf", config_name="leaderboard", version_base="1.3")
def _leaderboard_app(cfg: DictConfig) -> None:
    from pathlib import Path

    from fragility.benchmarks.leaderboard import terminal_table, write_leaderboards
    from fragility.benchmarks.store import DB_NAME, ResultStore, merge_stores
    from fragility.benchmarks.worst_case import samples_for

    db = cfg.get("results_db")
    if not db and not (Path(cfg.results_dir) / DB_NAME).is_file() and not cfg.get("merge_from"):
        _fail(f"no results store in {cfg.results_dir} (expected {DB_NAME}); run fragility first")
    try:
        store = ResultStore(db or cfg.results_dir, read_only=not cfg.get("merge_from"))  # a read-only store still renders
        if cfg.get("check"):  # fragility-leaderboard --check: the full integrity check, not only the quick one on open
            print(f"[fragility] integrity check of {store.path}: {store.check()}")
        if cfg.get("merge_from"):  # e.g. a laptop's results dir into the team's database; rows keyed by config hash
            copied, present = merge_stores(ResultStore(cfg.merge_from), store)
            print(f"[fragility] merged {cfg.merge_from} into {store.path}: {copied} runs copied, {present} already there")
        records = store.records()
    except FragilityError as e:
        _fail(str(e))
    try:
        write_leaderboards(records, cfg.results_dir, samples=samples_for(store, records))
        where = f"leaderboards written to {cfg.results_dir}/leaderboard.{{csv,md,html}}"
    except OSError as e:  # a read-only results folder: the table is still shown
        where = f"leaderboard files not written ({e.strerror or e})"
    print(terminal_table(records))
    print(f"[fragility] {len(records)} runs; {where}")


def leaderboard_main() -> None:
    # ``--check`` reads as a flag; Hydra sees it as the override check=true
    sys.argv = [("check=true" if a == "--check" else a) for a in sys.argv]
    _leaderboard_app()
