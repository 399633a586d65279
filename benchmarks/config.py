"""Config helpers: the ``frac`` resolver, a guarded ``instantiate``, and config-group listings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

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


def _targets(node: Any):
    if isinstance(node, DictConfig):
        for k, v in node.items_ex(resolve=False):
            if k == "_target_":
                yield str(v)
            else:
                yield from _targets(v)
    elif isinstance(node, ListConfig):
        for v in node:
            yield from _targets(v)


def safe_instantiate(node: DictConfig, allowed: list[str] | tuple[str, ...] = (), **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` limited to targets inside fragility (or explicitly allowed
    prefixes), so a config file cannot import arbitrary code. Errors raised by the target come
    back as the original one-line FragilityError."""
    for t in _targets(node):
        if not (t.startswith("fragility.") or any(t == a or t.startswith(a.rstrip(".") + ".") for a in allowed)):
            raise ConfigError(f"refusing to instantiate {t!r}: only fragility.* targets or those listed in allowed_targets")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, FragilityError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, FragilityError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise ConfigError(f"bad parameter for {node.get('_target_')}: {cause}") from None
        raise
