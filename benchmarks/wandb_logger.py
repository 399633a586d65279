"""Weights & Biases output (offline by default). W&B is an output, never the source of truth:
every failure here becomes a one-line warning on stderr and the local results stay as written.
``init_timeout`` (seconds, default 5) bounds how long a run waits for W&B to start, so a machine
without network loses seconds, not W&B's default 90."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class NullLogger:
    """``logger=none``."""

    def start(self, config: dict, name: str, results_dir: Path) -> None: ...
    def log_run(self, metrics: dict[str, Any], row: dict[str, Any], images: dict[str, Path]) -> None: ...
    def finish(self) -> None: ...


class WandbLogger(NullLogger):
    def __init__(
        self,
        project: str = "fragility",
        entity: str | None = None,
        mode: str = "offline",
        dir: str | None = None,
        tags: list[str] | None = None,
        init_timeout: float = 5.0,
    ) -> None:
        self.project, self.entity, self.mode, self.dir, self.tags = project, entity, mode, dir, list(tags or [])
        self.init_timeout = float(init_timeout)
        self.run = None

    def _guard(self, what: str, fn, *a, **kw):
        # W&B can fail in many ways (network, auth, service start); none may cost local results.
        try:
            return fn(*a, **kw)
        except Exception as e:
            # stderr, not logging: Hydra's console handler writes log records to stdout
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(
                f"fragility: warning: W&B {what} failed ({type(e).__name__}: {first}); local results are unaffected",
                file=sys.stderr,
            )
            return None

    def start(self, config: dict, name: str, results_dir: Path) -> None:
        def _start():
            import wandb

            d = Path(self.dir) if self.dir else Path(results_dir)
            d.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=self.project,
                entity=self.entity,
                mode=self.mode,
                dir=str(d),
                name=name,
                config=config,
                tags=self.tags,
                reinit="finish_previous",
                settings=wandb.Settings(init_timeout=self.init_timeout),
            )

        self._guard("init", _start)

    def log_run(self, metrics: dict[str, Any], row: dict[str, Any], images: dict[str, Path]) -> None:
        if self.run is None:
            return

        def _log():
            import wandb

            payload: dict[str, Any] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            payload["leaderboard_row"] = wandb.Table(columns=list(row), data=[[row[c] for c in row]])
            for key, path in images.items():
                payload[key] = wandb.Image(str(path))
            self.run.log(payload)

        self._guard("log", _log)

    def finish(self) -> None:
        if self.run is not None:
            self._guard("finish", self.run.finish)
            self.run = None
