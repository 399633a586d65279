"""Issue 17's matrix of hostile and broken inputs, replayed: each ends in exit code 2 with exactly
one line on stderr (``fragility: error: ...``), no traceback, and the results store byte-identical.

Cases run in-process through the console script's own ``main`` (argv in, SystemExit out), against
one prepared results folder, with a tiny untrained model (no digits CNN training), so the module
stays fast. The model builders below are named by exact name in ``allowed_targets``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose
from torch import nn

from fragility.benchmarks import cli
from fragility.benchmarks.store import DB_NAME, ResultStore
from fragility.models.wrapper import Classifier

MARKER = Path("/tmp/fragility-hardening-pwned")
HERE = "test_hardening.build_net"


class _Net(nn.Module):
    """A tiny 1x8x8 classifier whose output can be made broken on purpose."""

    def __init__(self, kind: str, outputs: int) -> None:
        super().__init__()
        from fragility.datasets import digits_arrays

        self.kind = kind
        self.fc = nn.Linear(64, outputs)
        # nearest class mean on the digits train split: accurate enough to have images to attack
        x, y = digits_arrays("train")
        means = torch.stack([torch.from_numpy(x[y == c]).flatten(1).mean(0) for c in range(10)])[:outputs]
        means = (means - 0.5) / 0.25  # what the wrapper hands the net
        with torch.no_grad():
            self.fc.weight.copy_(means)
            self.fc.bias.copy_(-0.5 * (means**2).sum(1))

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if self.kind == "allnan":
            return out * float("nan")
        if self.kind == "allinf":
            return out + float("inf")
        if self.kind == "nan_some":  # NaN for some inputs only
            bad = (x.flatten(1).sum(1) > x.flatten(1).sum(1).median()).float()[:, None]
            return out + torch.where(bad > 0, float("nan"), 0.0)
        if self.kind == "nan_adv":  # finite on 8-bit-grid images (the data), NaN once an attack moves a pixel off it
            pixels = x * 0.25 + 0.5  # the wrapper normalized them
            off = ((pixels * 16 - (pixels * 16).round()).abs() > 1e-3).flatten(1).any(1)[:, None]
            return out + torch.where(off, float("nan"), 0.0)
        if self.kind == "const":  # does not depend on the input
            return self.fc.bias.expand(len(x), -1)
        return out


def build_net(kind: str = "ok", outputs: int = 10, name: str = "tiny", **_) -> Classifier:
    return Classifier(
        _Net(kind, outputs), mean=[0.5], std=[0.25], input_size=(1, 8, 8), class_names=list("0123456789"), name=name
    )


def _args(results: Path, *extra: str, allowed: str = HERE) -> list[str]:
    base = [f"results_dir={results}", "logger=none", "progress=false", "n_samples=16", "attack=fgsm"]
    return [*base, f"model._target_={HERE}", f"allowed_targets=[{allowed}]", *extra]


def call_cli(argv: list[str], entry=cli.main) -> tuple[int, str, str]:
    """Run a console script's main in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["fragility", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()


def call_run(argv: list[str]) -> tuple[int, str, str]:
    """What the console script does with a composed config, without Hydra's runtime (faster):
    run it; a FragilityError is the one line ``fragility: error: ...`` and exit code 2."""
    from fragility.benchmarks.runner import run
    from fragility.errors import FragilityError

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run(compose(argv))
    except FragilityError as e:
        return 2, out.getvalue(), err.getvalue() + f"fragility: error: {e}\n"
    return 0, out.getvalue(), err.getvalue()


# cases that need the console script itself (Hydra's own config and callbacks, the pre-run gate)
CLI_CASES = ("target-", "hydra-", "output-subdir", "run-dir", "logger-target", "unknown-interpolation", "fractional-")
CLI_CASES += ("results-dir-is-file", "garbage-store")


def digest(folder: Path) -> str:
    """SHA-256 of the store file (after folding any write-ahead log into it) and leaderboards."""
    db = folder / DB_NAME
    if db.is_file() and db.read_bytes()[:16] == b"SQLite format 3\x00" and os.access(db, os.W_OK):
        with contextlib.suppress(sqlite3.DatabaseError), contextlib.closing(sqlite3.connect(db)) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    h = hashlib.sha256()
    for p in sorted(folder.glob("*")):
        if p.is_file() and not p.name.endswith(("-wal", "-shm")):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _npz(path: Path, x, y) -> str:
    np.savez(path, x=x, y=y)
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    t = tmp_path_factory.mktemp("hard")
    results = t / "results"
    code, _, err = call_cli(_args(results))
    assert code == 0, err
    g = np.random.default_rng(0)
    x = (g.integers(0, 16, (20, 8, 8, 1)) / 16).astype(np.float32)
    y = g.integers(0, 10, 20)
    files = {
        "nan_pixels": _npz(t / "nan_pixels.npz", np.where(x > 0.9, np.nan, x), y),
        "neg_labels": _npz(t / "neg_labels.npz", x, np.where(y > 5, -1, y)),
        "float_labels": _npz(t / "float_labels.npz", x, y + 0.5),
        "complex_pixels": _npz(t / "complex_pixels.npz", x + 1j * x, y),
        "string_pixels": _npz(t / "string_pixels.npz", x.astype(str), y),
        "int64_pixels": _npz(t / "int64_pixels.npz", (x * 255).astype(np.int64), y),
        "nested_labels": _npz(t / "nested_labels.npz", x, y[:, None, None]),
        "nan_labels": _npz(t / "nan_labels.npz", x, np.where(y > 5, np.nan, y)),
        "empty": _npz(t / "empty.npz", x[:0], y[:0]),
        "label_outside": _npz(t / "label_outside.npz", x, np.where(y > 5, 10, y)),
        "mismatch": _npz(t / "mismatch.npz", x, y[:7]),
    }
    (t / "rand.th").write_bytes(np.random.default_rng(1).bytes(4096))
    garbage = t / "garbage"
    garbage.mkdir()
    (garbage / DB_NAME).write_bytes(np.random.default_rng(2).bytes(8192))
    truncated = t / "truncated"
    shutil.copytree(results, truncated)
    digest(truncated)
    b = (truncated / DB_NAME).read_bytes()
    (truncated / DB_NAME).write_bytes(b[: len(b) // 2])
    dirstore = t / "dirstore"
    (dirstore / DB_NAME).mkdir(parents=True)
    (t / "afile").write_text("not a folder")
    return {"t": t, "results": results, "files": files, "garbage": garbage, "truncated": truncated, "dirstore": dirstore}


def _cases(e) -> dict[str, tuple[list[str], str]]:
    r, t, f = e["results"], e["t"], e["files"]

    def npz(name):
        return ["dataset=npz", f"dataset.path={f[name]}", "dataset.class_names=[0,1,2,3,4,5,6,7,8,9]"]

    touch = f"touch {MARKER}"
    return {
        # the instantiate gate
        "target-via-interpolation": (
            _args(r, "+model.checkpoint=${pwn}", f"+pwn={{_target_:os.system,command:'{touch}'}}"),
            r"refusing to instantiate 'os.system'",
        ),
        "target-reexported-subprocess": (
            _args(r, f"+model.x={{_target_:fragility.benchmarks.provenance.subprocess.call,args:'{touch}'}}"),
            r"refusing to instantiate 'fragility.benchmarks.provenance.subprocess.call'",
        ),
        "target-reexported-os": (
            _args(r, f"+model.x={{_target_:fragility.benchmarks.wandb_logger.os.system,command:'{touch}'}}"),
            r"refusing to instantiate 'fragility.benchmarks.wandb_logger.os.system'",
        ),
        "target-own-helper": (
            _args(r, f"+model.x={{_target_:fragility.benchmarks.leaderboard._atomic_write,path:{MARKER},text:x}}"),
            r"refusing to instantiate",
        ),
        "target-prefix-allowed": (
            _args(r, "+model.x={_target_:os.system,command:x}", allowed=f"os,{HERE}"),
            r"refusing to instantiate 'os.system'",
        ),
        "target-part-method": (
            _args(r, f"+model.x={{_target_:fragility.attacks.patch.Patch.save,self:null,path:{MARKER}}}"),
            r"refusing to instantiate 'fragility.attacks.patch.Patch.save'",
        ),
        "target-part-file-writer": (
            _args(r, f"+model.x={{_target_:fragility.attacks.shape_bias.save_cue_conflict,path:{MARKER}}}"),
            r"refusing to instantiate 'fragility.attacks.shape_bias.save_cue_conflict'",
        ),
        "hydra-callback": (_args(r, f"+hydra.callbacks.x={{_target_:os.system,command:'{touch}'}}"), r"hydra.callbacks.x"),
        "hydra-callback-helper": (
            _args(r, "+hydra.callbacks.x={_target_:fragility.benchmarks.leaderboard.write_leaderboards}"),
            r"refusing to instantiate",
        ),
        "hydra-logging-class": (_args(r, "hydra.job_logging.handlers.console.class=os.system"), r"logging\.\* classes"),
        "output-subdir": (_args(r, "hydra.output_subdir=../../../../.."), r"output_subdir"),
        "run-dir": (_args(r, "hydra.run.dir=../outside"), r"hydra.run.dir.*leaves results_dir"),
        "logger-target": (_args(r, "logger=none", "logger._target_=fragility.benchmarks.store.ResultStore"), "refusing"),
        "unknown-interpolation": (_args(r, "attack.eps=${nope}"), r"cannot resolve"),
        # what the model says
        "nan-logits": (_args(r, "+model.kind=allnan"), r"non-finite logits"),
        "nan-some-logits": (_args(r, "+model.kind=nan_some"), r"non-finite logits .* for \d+ of 16"),
        "inf-logits": (_args(r, "+model.kind=allinf"), r"non-finite logits"),
        "fewer-logits": (_args(r, "+model.outputs=5"), r"returns 5 logits per image but has 10 classes"),
        # data
        "nan-pixels": (_args(r, *npz("nan_pixels")), r"nan_pixels.npz: images contain NaN or Inf"),
        "negative-labels": (_args(r, *npz("neg_labels")), r"neg_labels.npz: labels must be >= 0"),
        "float-labels": (_args(r, *npz("float_labels")), r"float_labels.npz: labels must be integers"),
        "complex-pixels": (_args(r, *npz("complex_pixels")), r"complex_pixels.npz: images must be uint8 or float"),
        "string-pixels": (_args(r, *npz("string_pixels")), r"string_pixels.npz: images must be uint8 or float"),
        "int64-pixels": (_args(r, *npz("int64_pixels")), r"int64_pixels.npz: images must be uint8 or float"),
        "nested-labels": (_args(r, *npz("nested_labels")), r"nested_labels.npz: labels must be 1-D"),
        "nan-labels": (_args(r, *npz("nan_labels")), r"nan_labels.npz: labels must be integers"),
        "empty-arrays": (_args(r, *npz("empty")), r"empty.npz: .*no images"),
        "label-outside-classes": (_args(r, *npz("label_outside")), r"label 10 is outside the 10 classes"),
        "labels-mismatch": (_args(r, *npz("mismatch")), r"mismatch.npz: 7 labels for 20 images"),
        "bad-split": (_args(r, "dataset.split=nope"), r"unknown digits split 'nope'"),
        # store and folders
        "garbage-store": (_args(e["garbage"]), r"is corrupt \(not an SQLite database\)"),
        "truncated-store": (_args(e["truncated"]), r"truncated/results.sqlite.*(corrupt|malformed)"),
        "store-is-directory": (_args(e["dirstore"]), r"is not a file"),
        "results-dir-is-file": (_args(t / "afile"), r"is not a folder"),
        # top-level values
        "negative-seed": (_args(r, "seed=-1"), r"seed must be between 0 and"),
        "huge-seed": (_args(r, f"seed={2**40}"), r"seed must be between 0 and"),
        "fractional-batch-size": (_args(r, "batch_size=1.5"), r"batch_size must be an integer, got 1.5"),
        "fractional-n-samples": (_args(r, "n_samples=300.9"), r"n_samples must be an integer, got 300.9"),
        "random-bytes-checkpoint": (
            [f"results_dir={r}", "logger=none", "progress=false", "model=cifar_resnet", f"model.checkpoint={t}/rand.th"],
            r"corrupt checkpoint .*rand.th",
        ),
    }


def _placeholder() -> dict:
    """Stand-in paths, only to list the case names at collection time."""
    names = ["nan_pixels", "neg_labels", "float_labels", "complex_pixels", "string_pixels", "int64_pixels"]
    names += ["nested_labels", "nan_labels", "empty", "label_outside", "mismatch"]
    p = Path("unused")
    return {"results": p, "t": p, "files": dict.fromkeys(names, "x"), "garbage": p, "truncated": p, "dirstore": p}


CASE_IDS = list(_cases(_placeholder()))


@pytest.mark.parametrize("case", CASE_IDS)
def test_matrix_case_one_line_exit_2_store_intact(case, env):
    argv, pattern = _cases(env)[case]
    folder = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("results_dir=")))
    before = digest(folder) if folder.is_dir() else (folder.read_bytes() if folder.exists() else None)
    MARKER.unlink(missing_ok=True)
    code, out, err = call_cli(argv) if case.startswith(CLI_CASES) else call_run(argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert len(lines) == 1, err
    assert lines[0].startswith("fragility: error: ") and "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]
    after = digest(folder) if folder.is_dir() else (folder.read_bytes() if folder.exists() else None)
    assert after == before, f"{folder} changed"
    assert not MARKER.exists()


def test_matrix_size():
    assert len(CASE_IDS) == 39


def test_read_only_store_refuses_runs_but_renders_leaderboards(env):
    ro = env["t"] / "readonly"
    shutil.copytree(env["results"], ro)
    digest(ro)
    db = ro / DB_NAME
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    made_ro = subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode == 0 if shutil.which("chattr") else False
    if not made_ro:
        os.chmod(db, 0o444)
        if os.access(db, os.W_OK):  # root without chattr: nothing makes the file read-only here
            pytest.skip("cannot make a read-only file on this system (root without chattr)")
    try:
        before = db.read_bytes()
        code, out, err = call_cli(_args(ro))
        assert code == 2 and len(err.strip().splitlines()) == 1 and "is read-only" in err, err
        n = len(ResultStore(ro, read_only=True).records())
        assert n > 0
        code, out, err = call_cli([f"results_dir={ro}"], entry=cli.leaderboard_main)
        assert code == 0, err
        assert f"{n} runs" in out
        code, out, err = call_cli([f"results_dir={ro}", "--check"], entry=cli.leaderboard_main)
        assert code == 0 and "integrity check" in out and ": ok" in out, err
        assert db.read_bytes() == before
    finally:
        if made_ro:
            subprocess.run(["chattr", "-i", str(db)], check=False)


@pytest.mark.parametrize("arg", ["bogus=1", "hydra/launcher=nope", "results_dir=[unclosed"])
def test_leaderboard_bad_command_line_is_one_line(arg):
    code, out, err = call_cli([arg], entry=cli.leaderboard_main)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("fragility-leaderboard: error: ") and "Traceback" not in err + out


def test_merge_from_a_missing_store_is_one_line_and_creates_nothing(env):
    missing = env["t"] / "typo-of-a-results-dir"
    code, _out, err = call_cli([f"results_dir={env['results']}", f"merge_from={missing}"], entry=cli.leaderboard_main)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no results store in" in err, err
    assert not missing.exists()  # a typo never leaves an empty store behind


def test_compare_on_a_corrupt_or_missing_store_is_one_line(env, capsys):
    from fragility.benchmarks.compare import main as compare_main

    for where, why in ((env["truncated"], r"corrupt|malformed"), (env["t"] / "nowhere", "no results store in")):
        assert compare_main(["a", "b", "--results-dir", str(where)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("fragility-compare: error: "), err
        assert re.search(why, err), err


def test_leaderboard_check_reports_a_corrupt_store(env):
    code, _out, err = call_cli([f"results_dir={env['truncated']}", "--check"], entry=cli.leaderboard_main)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"corrupt|malformed", err), err


def test_constant_output_is_flagged_not_a_traceback(env):
    results = env["t"] / "const"
    code, out, err = call_cli(_args(results, "+model.kind=const"))
    assert code == 0, err
    assert "Traceback" not in err
    assert "constant_output 16/16" in out
    (rec,) = ResultStore(results).records()
    assert "constant_output 16/16" in rec.flags  # stored with the row, not only printed


def test_non_finite_logits_under_attack_are_failed_and_flagged(env):
    from fragility.benchmarks.runner import run

    results = env["t"] / "nanadv"
    rec = run(compose(_args(results, "+model.kind=nan_adv")))
    assert rec.n_attacked > 0
    assert rec.success_rate == 0.0  # never a number computed from NaN
    s = ResultStore(results).samples(rec.config_hash)
    attacked = s[s["clean_pred"] == s["label"]]
    assert attacked["success"].eq(0).all() and attacked["pred_conf"].isna().all()
    assert all(json.loads(e)["nonfinite_logits"] for e in attacked["extras"])
    assert f"nonfinite_logits {rec.n_attacked}/{rec.n_attacked}" in rec.flags


def test_equal_budgets_hash_equal_and_huge_eps_displays():
    from fragility.benchmarks.provenance import config_hash
    from fragility.budget import format_number

    assert config_hash({"attack": {"eps": 0.1}}) == config_hash({"attack": {"eps": "1/10"}})
    assert config_hash({"attack": {"eps": "8/255"}}) == config_hash({"attack": {"eps": 8 / 255}})
    assert config_hash({"attack": {"eps": 0.1}}) != config_hash({"attack": {"eps": 0.2}})
    assert format_number(1e9) == "1e+09" and format_number(8 / 255) == "8/255" and format_number(1.0) == "1"
    assert format_number(0.2) == "0.2" and format_number(51 / 255) == "0.2" and format_number(2 / 255) == "2/255"


def test_leaderboard_files_are_world_readable(env):
    for p in env["results"].glob("*leaderboard*"):
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_hostile_names_are_escaped_in_every_html_file(env):
    """model.name, a checkpoint file name, an npz file name (the dataset), a defense label and a
    class name inside params, all hostile: no raw tag from them reaches any HTML written."""
    from fragility.benchmarks.leaderboard import write_leaderboards

    results = env["t"] / "hostile"
    shutil.copytree(env["results"], results)
    store = ResultStore(results)
    base = store.records()[0]
    hostile = [
        replace(base, config_hash="h1", model="<script>alert(2)</script>"),
        replace(base, config_hash="h2", model="<svg onload=alert(3)>", dataset="<svg onload=alert(6)>-test"),
        replace(base, config_hash="h3", defense="<script>alert(7)</script>(q=1)", variant="adaptive"),
        replace(base, config_hash="h4", params="eps=0.3 target=<script>alert(5)</script>"),
        # a store from someone else whose recorded input digest is markup (the summary's data_sha256)
        replace(base, config_hash="h5", config_json=json.dumps({"inputs": {"dataset.path": "<script>alert(8)</script>"}})),
    ]
    for r in hostile:
        store.write(r)
    write_leaderboards(store.records(), results)
    # and the real path: a TorchScript checkpoint and an npz whose FILE NAMES are hostile
    net = torch.jit.trace(_Net("ok", 10).eval(), torch.rand(2, 1, 8, 8))
    ckpt = env["t"] / "<svg onload=alert(3)>.pt"
    net.save(str(ckpt))
    g = np.random.default_rng(0)
    npz = _npz(
        env["t"] / "<svg onload=alert(6)>.npz", (g.integers(0, 16, (20, 8, 8, 1)) / 16).astype(np.float32), g.integers(0, 10, 20)
    )
    code, _out, err = call_cli(
        [
            f"results_dir={results}",
            "logger=none",
            "progress=false",
            "n_samples=16",
            "model=checkpoint",
            f"model.path='{ckpt}'",
            "model.format=torchscript",
            "model.input_size=[1,8,8]",
            "model.mean=[0]",
            "model.std=[1]",
            "dataset=npz",
            f"dataset.path='{npz}'",
        ]
    )
    assert code == 0, err
    pages = list(results.rglob("*.htm*"))
    assert pages
    for page in pages:
        text = page.read_text(errors="replace").lower()
        for raw in ("<script>alert", "<svg onload"):  # the page may have its own <script>; none from a name
            assert raw not in text, (page, raw)
    assert "&lt;script&gt;alert(8)" in (results / "leaderboard.html").read_text()  # shown, escaped


def test_wandb_fails_fast_and_warns_on_stderr(monkeypatch, capsys):
    import wandb

    from fragility.benchmarks.wandb_logger import WandbLogger

    seen = {}

    def fake_init(**kw):
        seen.update(kw)
        raise TimeoutError("no network\nsecond line")

    monkeypatch.setattr(wandb, "init", fake_init)
    logger = WandbLogger(mode="online", init_timeout=2)
    logger.start({}, name="x", results_dir=Path("/tmp"))
    assert seen["settings"].init_timeout == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "fragility: warning: W&B init failed (TimeoutError: no network); local results are unaffected"
    ]


def test_sweep_with_a_bad_budget_runs_the_others(env):
    """``-m attack.eps=0.08,-1,0.09``: the bad job fails in one line, recorded as failed; the jobs
    beside it are stored; the sweep ends non-zero (the sweep itself is benchmarks/sweep.py's)."""
    results = env["t"] / "sweep"
    code, _, err = call_cli(["-m", *_args(results, "attack.eps=0.08,-1,0.09")])
    assert code == 1, err
    assert "Traceback" not in err
    job_errors = [ln for ln in err.splitlines() if ln.startswith("fragility: error: job")]
    assert len(job_errors) == 1 and "eps must be >= 0" in job_errors[0], err
    store = ResultStore(results)
    assert sorted(round(r.eps, 6) for r in store.records()) == [0.08, 0.09]
    failed = store.failures()
    assert len(failed) == 1 and "eps must be >= 0" in failed[0]["error"]
