"""Every config file composes and instantiates; instantiate only imports allowed targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose
from omegaconf import OmegaConf

from fragility.benchmarks.config import CONF_DIR, GROUPS, group_options, safe_instantiate
from fragility.errors import ConfigError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cfg")
    np.savez(tmp / "d.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.arange(4))
    (tmp / "folder" / "a").mkdir(parents=True)
    from fragility.models.cifar_resnet import CifarResNet

    torch.save(CifarResNet(20).state_dict(), tmp / "r20.th")
    return tmp


REQUIRED = {
    ("model", "checkpoint"): ["model.path={t}/r20.th", "model.arch=cifar_resnet20"],
    ("dataset", "cifar10_npz"): ["dataset.path={t}/d.npz"],
    ("dataset", "npz"): ["dataset.path={t}/d.npz"],
    ("dataset", "imagefolder"): ["dataset.root={t}/folder"],
}


def _cases():
    for group in GROUPS:
        for name in group_options(group):
            yield group, name


@pytest.mark.parametrize("group, name", list(_cases()))
def test_every_config_instantiates(group, name, files):
    extra = [o.format(t=files) for o in REQUIRED.get((group, name), [])]
    if name == "given":  # an object of this process, registered as evaluate() does
        import torch

        from fragility.datasets.given import register as given_images
        from fragility.models.given import register as given_model

        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        key = given_model(net, (3, 2, 2)) if group == "model" else given_images(torch.rand(4, 3, 2, 2), [0, 1, 2, 0], "abc")
        extra.append(f"{group}.key={key}")
    cfg = compose([f"{group}={name}", *extra])
    node = cfg[group]
    if group == "defense" and not node.get("_target_"):
        assert node.name == "none"
        return
    obj = safe_instantiate(node)
    assert obj is not None
    if group == "attack":
        assert obj.name == name


def test_config_file_names_match_classes():
    for path in (CONF_DIR / "attack").glob("*.yaml"):
        target = OmegaConf.load(path)["_target_"]
        assert target.split(".")[-2] == path.stem  # conf/attack/x.yaml -> fragility.attacks.x.Class


def test_frac_budget_and_top_level_keys():
    cfg = compose(["attack=pgd", "attack.eps=8/255", "dataset=cifar10_npz", "dataset.path=x.npz"])
    assert safe_instantiate(cfg.attack).eps == pytest.approx(8 / 255)
    for key in ("n_samples", "seed", "batch_size", "device", "results_dir"):
        assert key in cfg
    assert OmegaConf.create({"e": "${frac:4/255}"}).e == pytest.approx(4 / 255)


def test_digits_pairs_get_their_budget():
    assert compose([]).attack.eps == 0.3
    assert compose(["dataset=cifar10_npz", "dataset.path=x"]).attack.eps == "8/255"


def test_foreign_targets_refused():
    with pytest.raises(ConfigError, match="refusing to instantiate 'os.system'"):
        safe_instantiate(OmegaConf.create({"_target_": "os.system", "command": "echo hi"}))
    nested = OmegaConf.create({"_target_": "fragility.datasets.Digits", "split": {"_target_": "subprocess.run"}})
    with pytest.raises(ConfigError):
        safe_instantiate(nested)
    ok = safe_instantiate(OmegaConf.create({"_target_": "collections.OrderedDict"}), allowed=["collections.OrderedDict"])
    assert ok == {}
    with pytest.raises(ConfigError):  # allowed_targets are exact names, not prefixes
        safe_instantiate(OmegaConf.create({"_target_": "collections.OrderedDict"}), allowed=["collections"])
