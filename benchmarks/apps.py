"""One way to start a console app on a Hydra config: errors a user can fix are one line and exit 2.

Every app (``fragility``, ``fragility-train``, ``fragility-visualize``, ``fragility-style``,
``fragility-leaderboard``, which only reads its results folder) goes
through :func:`gate` before Hydra acts: :func:`precheck` (overrides Hydra's grammar rejects, unknown
config-group choices) and :func:`pregate` (the config composed as Hydra is about to, then the
instantiate gate on it), each failure one line ``<prog>: error: ...`` and exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fragility.benchmarks.config import GROUPS, check_group_choice
from fragility.errors import ConfigError, FragilityError


def fail(prog: str, msg: str) -> None:
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(2)


INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)


@contextmanager
def interruptible(prog: str, rerun: str = "") -> Iterator[None]:
    """Ctrl-C is one line and exit 130 instead of a traceback from wherever the work was. Each run
    is written in one transaction (:meth:`fragility.benchmarks.store.ResultStore.write`), so what
    was written before stays whole and a half-done run leaves nothing behind."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; what was already written is kept{rerun}", file=sys.stderr)
        sys.exit(INTERRUPTED)


def precheck(argv: list[str]) -> None:
    """Overrides that Hydra's grammar rejects, and unknown config-group names (also with a package,
    ``dataset@content=...``), get one line (before Hydra's multi-line messages)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    # Hydra's own parser separates the overrides from its flags and their values (--config-dir DIR)
    overrides = list(get_args_parser().parse_known_args(argv)[0].overrides)
    try:
        OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise ConfigError(f"cannot parse the override: {str(e).splitlines()[0]} (quote values with special characters)") from None
    for arg in overrides:
        if "=" not in arg:
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        group = key.partition("@")[0]
        if group in GROUPS and value and not any(ch in value for ch in "()[]{}$"):
            for choice in value.split(","):
                check_group_choice(group, choice.strip())


def pregate(argv: list[str], config_name: str, read_only: bool = False) -> None:
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
        unknown = _unknown_key(e, args.config_name or config_name, overrides)
        raise ConfigError(unknown or (text.splitlines()[0] if text else type(e).__name__)) from None
    finally:
        GlobalHydra.instance().clear()
    check_hydra(cfg, dirs=not read_only)
    try:
        check_config(cfg)
    except FragilityError as e:
        if not str(e).startswith("cannot resolve"):
            raise
        # a value that only resolves inside the run (${hydra:...}); the app checks it again before any work


def _unknown_key(err: Exception, config_name: str, overrides: list[str]) -> str:
    """For an override of a key the config does not have (Hydra: "Could not override 'attack.alpha'.
    To append to your config use +attack.alpha=0"), one line naming the keys that exist there:
    appending the key would only fail later, as an argument the attack does not take."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = err.__cause__
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not getattr(cause, "full_key", None):
        return ""
    key = str(cause.full_key)
    parent = key.rpartition(".")[0]
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("fragility.conf", version_base="1.3"):
            cfg = compose(config_name, rest)
    except Exception:  # another override fails too: Hydra's own first line says which
        return ""
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or not len(node):
        return ""
    keys = ", ".join(str(k) for k in node if not str(k).startswith("_"))
    where = f"{parent} ({OmegaConf.select(cfg, parent + '._target_') or parent})" if parent else "the config"
    return f"unknown setting {key}: {where} has {keys}"


def gate(prog: str, config_name: str, argv: list[str], read_only: bool = False) -> None:
    """:func:`precheck` and :func:`pregate` of ``argv`` against ``conf/<config_name>.yaml``; a
    failure is one line ``<prog>: error: ...`` and exit 2."""
    try:
        precheck(argv)
        pregate(argv, config_name, read_only)
    except FragilityError as e:
        fail(prog, str(e))


def console_app(config_name: str, prog: str, body: Callable[[DictConfig], Any]) -> None:
    """Gate the command line (:func:`gate`), compose ``conf/<config_name>.yaml`` with it and run
    ``body(cfg)``."""
    gate(prog, config_name, sys.argv[1:])

    @interruptible(prog)
    @hydra.main(config_path="pkg://fragility.conf", config_name=config_name, version_base="1.3")
    def _app(cfg: DictConfig) -> None:
        try:
            body(cfg)
        except FragilityError as e:
            fail(prog, str(e))
        except OmegaConfBaseException as e:
            fail(prog, str(e).splitlines()[0])

    _app()
