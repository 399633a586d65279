"""``fragility-compare A B``: are two models (or defenses) really different on the same images?

Each side's robustness per image is its per-sample worst case over the attacks it was scored
with (:mod:`fragility.benchmarks.worst_case`); the two sides are paired by ``sample_id`` within
each threat model, dataset and seed, and McNemar's exact test is run on the discordant pairs.

Example::

    fragility-compare digits_cnn "digits_cnn@7bb5b676" --results-dir results --threat "linf 0.1"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fragility-compare", description=__doc__.splitlines()[0])
    parser.add_argument("a", help="a model or defense name, as the leaderboard shows it")
    parser.add_argument("b", help="the other one")
    parser.add_argument("--results-dir", default="results", help="the results store (default: results)")
    parser.add_argument("--threat", default=None, help='one threat model only, e.g. "linf 0.1"')
    args = parser.parse_args(argv)

    from fragility.benchmarks.store import DB_NAME, ResultStore
    from fragility.benchmarks.worst_case import compare, samples_for
    from fragility.errors import FragilityError

    if "://" not in args.results_dir and not (Path(args.results_dir) / DB_NAME).is_file():
        return _error(f"no results store in {args.results_dir} (expected {DB_NAME}); run fragility first")
    try:
        store = ResultStore(args.results_dir, read_only=True)  # only reads; a corrupt store is one line
        records = store.records()
        out = compare(records, samples_for(store, records), args.a, args.b, args.threat)
    except (FragilityError, ValueError) as e:
        return _error(str(e))
    if out.empty:
        print(f"no threat model, dataset and seed scored for both {args.a} and {args.b}")
        return 0
    print(out.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("only_a / only_b: images robust under a only / b only; pvalue: McNemar exact (two-sided)")
    return 0


def _error(msg: str) -> int:
    print(f"fragility-compare: error: {msg}", file=sys.stderr)
    return 2


def cli() -> None:
    sys.exit(main())
