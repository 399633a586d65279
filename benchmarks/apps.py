"""One way to start a console app on a Hydra config: errors a user can fix are one line and exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from fragility.errors import FragilityError


def fail(prog: str, msg: str) -> None:
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(2)


def console_app(config_name: str, prog: str, body: Callable[[DictConfig], Any]) -> None:
    """Compose ``conf/<config_name>.yaml`` with the command line and run ``body(cfg)``."""

    @hydra.main(config_path="pkg://fragility.conf", config_name=config_name, version_base="1.3")
    def _app(cfg: DictConfig) -> None:
        try:
            body(cfg)
        except FragilityError as e:
            fail(prog, str(e))
        except OmegaConfBaseException as e:
            fail(prog, str(e).splitlines()[0])

    _app()
