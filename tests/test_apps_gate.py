"""Every console app goes through the same gate as ``fragility`` before Hydra acts
(benchmarks/apps.py ``gate``): an unknown config-group choice, or a ``_target_`` outside fragility
anywhere in the config (a node the app never instantiates, or a Hydra callback Hydra itself would
instantiate), is one line ``<app>: error: ...`` and exit 2, with nothing written."""

from __future__ import annotations

import re
import sys
from importlib.metadata import entry_points

import pytest

# each app's output folder lands under the test's tmp_path; a rejected command line writes nothing
APPS = {
    "fragility": ["results_dir={tmp}", "logger=none", "progress=false"],
    "fragility-train": ["out_dir={tmp}/train", "progress=false", "epochs=1", "max_train=64"],
    "fragility-visualize": ["results_dir={tmp}", "steps=1"],
    "fragility-style": ["results_dir={tmp}", "progress=false", "n_samples=2", "steps=1"],
}
CASES = {
    "unknown-model": (["model=nope"], r"unknown model 'nope' \(valid: .*digits_cnn"),
    "foreign-target": (["+extra._target_=os.getcwd"], r"refusing.*os\.getcwd"),
    "foreign-callback": (["+hydra.callbacks.probe._target_=os.getcwd"], r"refusing.*os\.getcwd"),
}
EXTRA = {  # group choices only some apps have: the logger (fragility, visualize), the style app's packaged groups
    ("fragility-visualize", "unknown-logger"): (["logger=nope"], r"unknown logger 'nope' \(valid: .*wandb"),
    ("fragility-style", "unknown-features"): (["model@features=nope"], r"unknown model 'nope'"),
    ("fragility-style", "unknown-content"): (["dataset@content=nope"], r"unknown dataset 'nope' \(valid: .*digits"),
}
PARAMS = [(app, case, *CASES[case]) for app in APPS for case in CASES] + [(a, c, *v) for (a, c), v in EXTRA.items()]


def _entry(app: str):
    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == app]
    return ep.load()


@pytest.mark.parametrize(("app", "case", "args", "pattern"), PARAMS, ids=[f"{p[0]}-{p[1]}" for p in PARAMS])
def test_app_rejects_before_hydra_acts(app, case, args, pattern, tmp_path, monkeypatch, capsys):
    argv = [a.format(tmp=tmp_path) for a in APPS[app]] + args
    monkeypatch.setattr(sys, "argv", [app, *argv])
    with pytest.raises(SystemExit) as e:
        _entry(app)()
    assert e.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{app}: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert not list(tmp_path.iterdir())  # no Hydra run folder, no output: nothing ran


CONFIGS = {"fragility": "config", "fragility-train": "train", "fragility-visualize": "visualize", "fragility-style": "style"}


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_gate_passes_each_apps_ordinary_command_line(app, multirun, tmp_path):
    """The gate refuses only what is wrong: each app's own defaults (and a sweep of them) pass."""
    from fragility.benchmarks.apps import gate

    argv = [a.format(tmp=tmp_path) for a in APPS[app]] + (["-m", "seed=0,1"] if multirun else [])
    assert gate(app, CONFIGS[app], argv) is None
