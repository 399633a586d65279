"""A run's key holds the content of the files it reads (benchmarks/inputs.py): new weights or data
under an old path are run, never answered with the old file's numbers from the store."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import compose
from omegaconf import OmegaConf
from PIL import Image

import fragility.benchmarks.sweep as sweep_module
from fragility.benchmarks.config import check_config
from fragility.benchmarks.inputs import folder_digest, input_digests, with_inputs
from fragility.benchmarks.page import rerun_command
from fragility.benchmarks.runner import run
from fragility.benchmarks.store import ResultStore


def _save_scripted(net: torch.nn.Module, path) -> None:
    torch.jit.save(torch.jit.script(net.eval()), str(path))


def _model_args(path) -> list[str]:
    return [
        "model=checkpoint",
        f"model.path={path}",
        "model.format=torchscript",
        "model.input_size=[1,8,8]",
        "model.mean=[0.0]",
        "model.std=[1.0]",
    ]


def test_new_weights_under_the_same_path_are_run_again(digits_model, cfg_factory, tmp_path):
    path = tmp_path / "model.pt"
    _save_scripted(digits_model.net, path)
    cfg = cfg_factory("n_samples=40", "attack=fgsm", "attack.eps=0.1", "escalate=false", *_model_args(path))
    first = run(cfg)
    assert sweep_module._standard_done(cfg)  # the sweep's "already done" agrees with the runner's key
    assert run(cfg).timestamp == first.timestamp  # same bytes: skipped

    torch.manual_seed(0)
    broken = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # "retrained" into the same file
    _save_scripted(broken, path)
    assert not sweep_module._standard_done(cfg)
    second = run(cfg)
    assert second.config_hash != first.config_hash and second.clean_acc < first.clean_acc - 0.5
    stored = {r.config_hash: r for r in ResultStore(cfg.results_dir).records()}
    assert set(stored) == {first.config_hash, second.config_hash}  # the old weights' row is kept
    blob = json.loads(stored[second.config_hash].config_json)
    assert set(blob["inputs"]) == {"model.path"} and len(blob["inputs"]["model.path"]) == 64
    assert "inputs" not in rerun_command(stored[second.config_hash])  # digests are not a setting


def test_a_folder_key_follows_its_images_not_their_times(tmp_path):
    root = tmp_path / "folder"
    for i, cls in enumerate(["cat", "dog"]):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / cls / "a.png")
    before = folder_digest(root)
    (root / "cat" / "a.png").touch()  # a new modification time only: the same key
    assert folder_digest(root) == before
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "dog" / "b.png")  # an image added
    added = folder_digest(root)
    assert added != before
    (root / "dog" / "b.png").rename(root / "cat" / "b.png")  # moved to another class
    assert folder_digest(root) not in (before, added)


def test_every_input_file_of_the_config_is_digested_and_the_demo_keeps_its_hash(tmp_path):
    data = tmp_path / "x.npz"
    np.savez(data, x=np.zeros((2, 8, 8, 1), np.uint8), y=np.zeros(2, np.int64))
    patch = tmp_path / "patch.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(patch)
    resolved = {
        "model": {"checkpoint": str(tmp_path / "missing.th")},  # missing: the loader will say so
        "dataset": {"path": str(data)},
        "attack": {"load": str(patch), "save": str(tmp_path / "out.png"), "train_dataset": {"root": str(tmp_path)}},
        "defense": {"path": None},
    }
    got = input_digests(resolved)
    assert set(got) == {"dataset.path", "attack.load", "attack.train_dataset.root"}
    assert input_digests({"dataset": {"root": str(tmp_path), "download": True}}) == {}  # torchvision checks MD5s

    demo = check_config(compose(["logger=none"]))
    assert with_inputs(demo) is demo  # no files: the embedded demo's hash is unchanged
    assert "inputs" not in OmegaConf.to_container(compose(["logger=none"]))
