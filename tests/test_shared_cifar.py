"""Acceptance numbers on real data: resnet20 on 1000 seeded shared CIFAR-10 test images.

Needs ../shared (or FRAGILITY_SHARED); skipped with a message naming the path when it is missing.
"""

from __future__ import annotations

import pytest

from fragility.benchmarks.runner import run


@pytest.fixture(scope="module")
def cifar_runs(shared_dir, tmp_path_factory):
    from conftest import compose

    out = tmp_path_factory.mktemp("cifar")
    base = [
        f"results_dir={out}",
        "logger=none",
        "progress=false",
        "model=cifar_resnet",
        "model.depth=20",
        f"model.checkpoint={shared_dir}/models/cifar10/resnet20-12fca82f.th",
        "dataset=cifar10_npz",
        f"dataset.path={shared_dir}/data/cifar10/test.npz",
        "n_samples=1000",
        "attack.eps=8/255",
    ]
    return {
        "fgsm": run(compose([*base, "attack=fgsm"])),
        "fgsm0": run(compose([*base, "attack=fgsm", "attack.eps=0"])),
        "pgd": run(compose([*base, "attack=pgd", "attack.steps=10"])),
    }


def test_resnet20_clean_accuracy_on_jpeg_cifar(cifar_runs):
    assert 0.78 <= cifar_runs["fgsm"].clean_acc <= 0.84  # README: about 81% on these JPEG-degraded images


def test_fgsm_8_255_success(cifar_runs):
    assert cifar_runs["fgsm"].success_rate >= 0.90
    assert cifar_runs["fgsm"].mean_linf == pytest.approx(8 / 255, abs=1e-6)


def test_eps_zero_robust_equals_clean_exactly(cifar_runs):
    r = cifar_runs["fgsm0"]
    assert r.robust_acc == r.clean_acc and r.success_rate == 0.0


def test_pgd_not_weaker_than_fgsm(cifar_runs):
    assert cifar_runs["pgd"].robust_acc <= cifar_runs["fgsm"].robust_acc
