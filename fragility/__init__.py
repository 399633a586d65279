"""fragility: adversarial-robustness benchmarking for image classifiers.

The user-facing pieces live in subpackages: ``fragility.attacks``, ``fragility.defenses``,
``fragility.models`` and ``fragility.benchmarks`` (runner, data, metrics, store, leaderboards).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fragility")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from fragility.errors import FragilityError

__all__ = ["FragilityError", "__version__"]
