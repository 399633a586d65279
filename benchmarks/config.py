"""Config helpers: the ``frac`` resolver, a guarded ``instantiate``, and config-group listings."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from hydra._internal.utils import _locate  # Hydra's own lookup, so the object checked is the one built
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fragility.budget import parse_number
from fragility.errors import ConfigError, FragilityError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
try:  # installed: fragility.conf is a package next to fragility.benchmarks
    import fragility.conf as _conf

    CONF_DIR = Path(_conf.__file__).resolve().parent
except ImportError:  # pragma: no cover
    pass

GROUPS = ("model", "dataset", "attack", "defense", "logger")

if not OmegaConf.has_resolver("frac"):
    # ${frac:8/255} -> 0.03137...; parsed with fractions.Fraction, never eval.
    OmegaConf.register_new_resolver("frac", lambda s: parse_number(str(s), "fraction"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_group_choice(group: str, choice: str) -> None:
    options = group_options(group)
    if choice not in options:
        raise ConfigError(f"unknown {group} {choice!r} (valid: {', '.join(options)})")


# The packages whose public classes and functions a config may name (the parts), and the
# harness objects it may name by kind: loggers and Hydra callbacks. Anything else (a helper that
# writes a file, a standard-library function re-exported by a fragility module) is refused.
PART_PACKAGES = ("fragility.attacks.", "fragility.defenses.", "fragility.models.", "fragility.datasets.")
TARGET_KEYS = ("_target_",)


def _walk(node: Any, path: str = ""):
    """(key path, target) of every ``_target_`` in a plain (resolved) container."""
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{path}.{k}" if path else str(k)
            if k in TARGET_KEYS:
                yield path or "<root>", v
            else:
                yield from _walk(v, where)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _resolved(node: Any, what: str) -> Any:
    """The node with every interpolation resolved (what instantiate will actually see)."""
    if isinstance(node, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot resolve {what}: {str(e).splitlines()[0]}") from None
    return node


def _harness_kind(obj: Any) -> bool:
    """Harness objects a config may name: result loggers and Hydra callbacks."""
    from hydra.experimental.callback import Callback

    from fragility.benchmarks.wandb_logger import NullLogger

    return isinstance(obj, type) and issubclass(obj, (NullLogger, Callback))


def check_target(target: Any, allowed: list[str] | tuple[str, ...] = (), where: str = "") -> None:
    """Refuse ``target`` unless it is listed in ``allowed`` by exact name, or it names a public
    module-level class DEFINED in a fragility part (attacks, defenses, models, datasets), a model
    factory (``fragility.models.<x>.build``), or a fragility logger / Hydra callback. The name is checked before anything is imported, then the
    object it resolves to is checked (``fragility.x.os.system`` resolves to ``posix.system``)."""
    at = f" (at {where})" if where else ""
    if not isinstance(target, str) or not target:
        raise ConfigError(f"refusing to instantiate {target!r}{at}: _target_ must be a dotted name")
    if target in allowed:
        return
    refuse = f"refusing to instantiate {target!r}{at}: only fragility's own classes or names listed in allowed_targets"
    parts = target.split(".")
    if parts[0] != "fragility" or any(not p or p.startswith("_") for p in parts):
        raise ConfigError(refuse)
    try:
        obj = _locate(target)
    except Exception:
        raise ConfigError(f"unknown _target_ {target!r}{at}") from None
    module = getattr(obj, "__module__", None) or ""
    if not (isinstance(obj, type) or inspect.isfunction(obj)) or not module.startswith("fragility."):
        raise ConfigError(refuse)
    # module-level classes, and the model factories (``build``): never a method (Patch.save) or a
    # helper function that writes files (save_cue_conflict); list those by exact name to allow them
    if getattr(obj, "__qualname__", "") != parts[-1]:
        raise ConfigError(refuse)
    if inspect.isfunction(obj) and not (module.startswith("fragility.models.") and obj.__name__ == "build"):
        raise ConfigError(refuse)
    if not (module.startswith(PART_PACKAGES) or _harness_kind(obj)):
        raise ConfigError(refuse)


def check_targets(node: Any, allowed: list[str] | tuple[str, ...] = (), what: str = "config") -> Any:
    """Check every ``_target_`` in ``node`` after interpolation; returns the resolved container."""
    plain = _resolved(node, what)
    for where, target in _walk(plain, what):
        check_target(target, allowed, where)
    return plain


def check_config(cfg: DictConfig) -> dict:
    """The instantiate gate for a whole run config, before any work: every ``_target_`` anywhere
    in it (also in nodes only reachable through an interpolation), resolved. Returns the
    resolved config."""
    allowed = allowed_targets(cfg)
    plain: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra":
            continue
        node = cfg._get_node(key)
        try:
            plain[str(key)] = _resolved(node, str(key)) if isinstance(node, (DictConfig, ListConfig)) else cfg[key]
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot resolve {key}: {str(e).splitlines()[0]}") from None
    for where, target in _walk(plain):
        check_target(target, allowed, where)
    return plain


def allowed_targets(cfg: Any) -> list[str]:
    """``allowed_targets``: exact names (a list of strings) the user trusts in addition."""
    raw = cfg.get("allowed_targets") if hasattr(cfg, "get") else None
    if raw is None:
        return []
    if isinstance(raw, str) or not all(isinstance(a, str) for a in raw):
        raise ConfigError("allowed_targets must be a list of dotted names, e.g. [torchvision.models.resnet18]")
    return list(raw)


def check_hydra(cfg: DictConfig, dirs: bool = True) -> None:
    """The Hydra part of a composed config (``return_hydra_config``), checked before Hydra acts on
    it: every callback's ``_target_`` (resolved), logging factories, and (``dirs``) the output
    folders, which stay under ``results_dir`` unless given as absolute paths."""
    allowed = allowed_targets(cfg)
    hydra_cfg = cfg.get("hydra")
    if hydra_cfg is None:
        return
    callbacks = hydra_cfg.get("callbacks") or {}
    for name in list(callbacks.keys()):
        check_targets(callbacks._get_node(name), allowed, f"hydra.callbacks.{name}")
    for key in ("job_logging", "hydra_logging"):
        node = hydra_cfg.get(key)
        if node is not None:
            _check_logging(node, f"hydra.{key}")
    if dirs:
        _check_dirs(cfg)


def _check_logging(node: Any, path: str) -> None:
    """logging.config.dictConfig calls ``()`` factories and ``class`` names: only logging's own.
    Only those values are resolved (the rest may name run-time folders not known yet)."""
    if isinstance(node, DictConfig):
        for k, v in node.items_ex(resolve=False):
            if k in ("()", "class"):
                try:
                    v = node[k]
                except OmegaConfBaseException as e:
                    raise ConfigError(f"cannot resolve {path}.{k}: {str(e).splitlines()[0]}") from None
                if not isinstance(v, str) or not v.startswith(("logging.", "hydra.")):
                    raise ConfigError(f"refusing {path}.{k}={v!r}: logging may only use logging.* classes")
            else:
                _check_logging(node._get_node(k), f"{path}.{k}")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            _check_logging(node._get_node(i), f"{path}[{i}]")


def _check_dirs(cfg: DictConfig) -> None:
    try:
        root = _abs(str(cfg.get("results_dir") or "."))
    except OmegaConfBaseException:  # resolves only inside the run (${hydra:runtime.cwd}/...): Hydra's own folders
        return
    if root.exists() and not root.is_dir():  # else Hydra fails creating its run folder inside it
        raise ConfigError(f"results_dir {root} is not a folder")
    if root.is_dir() and not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"results_dir {root} is read-only; use another results_dir (fragility-leaderboard can still read it)")
    probe = OmegaConf.create(OmegaConf.to_container(cfg.hydra, resolve=False))
    probe = OmegaConf.create({**{k: v for k, v in cfg.items_ex(resolve=False) if k != "hydra"}, "hydra": probe})
    OmegaConf.update(probe, "hydra.job.num", 0, force_add=True)
    OmegaConf.update(probe, "hydra.job.id", "0", force_add=True)
    dirs = {}
    for key in ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.output_subdir"):
        try:
            value = OmegaConf.select(probe, key, throw_on_resolution_failure=True)
        except OmegaConfBaseException:
            continue
        if value is not None:
            dirs[key] = str(value)
    outputs = {"hydra.run.dir": dirs.get("hydra.run.dir")}
    if dirs.get("hydra.sweep.dir") is not None:
        outputs["hydra.sweep.dir"] = dirs["hydra.sweep.dir"]
        if dirs.get("hydra.sweep.subdir") is not None:
            outputs["hydra.sweep.subdir"] = str(Path(dirs["hydra.sweep.dir"]) / dirs["hydra.sweep.subdir"])
    for key, value in outputs.items():
        if value is None or Path(value).is_absolute():
            continue  # an absolute path is the user's choice
        if not _under(_abs(value), root):
            raise ConfigError(f"{key}={value!r} leaves results_dir ({root}); give an absolute path to write elsewhere")
    sub = dirs.get("hydra.output_subdir")
    if sub is not None and not Path(sub).is_absolute():
        for value in outputs.values():
            if value is None:
                continue
            base = _abs(value)
            if not _under(_abs(str(base / sub)), base if Path(value).is_absolute() else root):
                raise ConfigError(f"hydra.output_subdir={sub!r} leaves the run folder; give an absolute path to write elsewhere")


def _abs(p: str) -> Path:
    return Path(os.path.normpath(Path(p).expanduser().absolute()))


def _under(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def safe_instantiate(node: DictConfig, allowed: list[str] | tuple[str, ...] = (), **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` behind the gate (:func:`check_target` for every ``_target_``
    in the node, nested ones and those reached through interpolations included, after they are
    resolved); what is checked is exactly what is instantiated. Errors raised by the target come
    back as the original one-line FragilityError."""
    plain = check_targets(node, allowed, str(node.get("_target_", "node")) if hasattr(node, "get") else "node")
    check_targets(kwargs, allowed, "arguments")
    try:
        return instantiate(plain, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, FragilityError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, FragilityError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise ConfigError(f"bad parameter for {plain.get('_target_')}: {cause}") from None
        raise


def first_job_overrides(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first job (``attack.eps=0.1,0.2`` -> ``attack.eps=0.1``), in
    Hydra's own parsing; plain overrides come back unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for text, o in zip(overrides, parsed):
        if o.is_sweep_override():
            first = next(iter(o.sweep_string_iterator()), None)
            if first is None:
                continue
            out.append(f"{o.get_key_element()}={first}")
        else:
            out.append(text)
    return out
