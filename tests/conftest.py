"""Shared fixtures: tiny models, the digits CNN (trained once per session into a temp cache),
Hydra config composition, and the location of ../shared (real CIFAR-10 and ResNets).

``FRAGILITY_SHARED`` points at the shared folder; default: ``../shared`` beside the checkout.
Tests that need it are marked ``shared`` and are skipped with a message saying where it was
looked for when it is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one worker per core (addopts -n auto): with torch's default of one thread per core in each
    # worker, the workers' thread pools oversubscribe the cores and spin against each other (measured
    # here: the RayS tests 6 s alone, 90 s under -n 2 with a second job running). Subprocesses that
    # the tests start (the command-line apps) inherit the environment variable.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def shared_path() -> Path:
    return Path(os.environ.get("FRAGILITY_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    p = shared_path()
    if not (p / "data" / "cifar10" / "test.npz").is_file():
        pytest.skip(f"shared CIFAR-10 files not found at {p} (set FRAGILITY_SHARED=/path/to/shared)")
    return p


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the digits CNN cache and W&B files out of the user's home during tests."""
    os.environ["FRAGILITY_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["WANDB_SILENT"] = "true"
    os.environ.setdefault("WANDB_MODE", "offline")
    yield


class TinyNet(nn.Module):
    def __init__(self, channels: int = 3, side: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.fc = nn.Linear(8 * side * side, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def make_tiny(seed: int = 0, channels: int = 3, side: int = 8, num_classes: int = 10):
    from fragility.models.wrapper import Classifier

    torch.manual_seed(seed)
    net = TinyNet(channels, side, num_classes)
    return Classifier(
        net,
        mean=[0.5] * channels,
        std=[0.25] * channels,
        input_size=(channels, side, side),
        class_names=[f"c{i}" for i in range(num_classes)],
        name="tiny",
    )


@pytest.fixture
def tiny_model():
    return make_tiny()


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (12,), generator=g)
    return x, y


@pytest.fixture(scope="session")
def digits_model():
    from fragility.models.digits_cnn import build

    return build()


@pytest.fixture(scope="session")
def digits_test():
    from fragility.datasets import Digits

    return Digits("test").load(None, 0)


def compose(overrides: list[str]):
    """Compose the app's config like the command line would (no Hydra runtime)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_module

    import fragility.benchmarks.config  # noqa: F401  (registers the frac resolver)

    with initialize_config_module(config_module="fragility.conf", version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides)


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides: str):
        return compose([f"results_dir={tmp_path / 'results'}", "logger=none", "progress=false", *overrides])

    return make
