"""Ctrl-C through the real console script: one line and exit 130, not a traceback, and the runs
already finished stay in the store."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from fragility.benchmarks.apps import INTERRUPTED
from fragility.benchmarks.store import ResultStore


def test_ctrl_c_in_a_sweep_is_one_line_and_keeps_the_finished_runs(tmp_path):
    results = tmp_path / "results"
    # fgsm finishes in a second; onepixel (differential evolution, 40,400 queries per image it
    # cannot fool) is still running when the signal arrives
    cmd = ["fragility", "-m", "attack=fgsm,onepixel", f"results_dir={results}", "logger=none", "progress=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out: list[str] = []
    first_done = threading.Event()

    def read():
        for line in p.stdout:
            out.append(line)
            if "#1 : attack=onepixel" in line:  # Hydra's line as it starts the second job
                first_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first_done.wait(240), "".join(out)
    time.sleep(2)  # inside the second job's attack
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    reader.join(10)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == INTERRUPTED, "".join(out) + err
    assert "Traceback" not in err, err
    assert lines[-1].startswith("fragility: interrupted; what was already written is kept"), err
    recs = ResultStore(results).records()
    assert [r.attack for r in recs] == ["fgsm"] and recs[0].n_attacked > 0
