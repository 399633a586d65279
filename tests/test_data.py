"""Datasets: seeded subsets, file formats, errors, label alignment."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fragility.datasets import Cifar10, Digits, ImageFolder, Npz, align_labels, seeded_subset
from fragility.errors import DataError


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 6, 5, 3), dtype=np.uint8)
    y = np.repeat(np.arange(5), 10)  # sorted by class, like the shared files
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return tmp_path / "d.npz", x, y


def test_npz_seeded_subset(npz):
    path, x, y = npz
    a = Npz(str(path)).load(10, seed=0)
    b = Npz(str(path)).load(10, seed=0)
    c = Npz(str(path)).load(10, seed=1)
    assert torch.equal(a.ids, b.ids) and not torch.equal(a.ids, c.ids)
    assert a.image_size == (3, 6, 5) and a.x.dtype == torch.uint8
    i = int(a.ids[0])
    assert torch.equal(a.x[0], torch.from_numpy(x[i]).permute(2, 0, 1)) and int(a.y[0]) == y[i]
    imgs = a.images()
    assert imgs.dtype == torch.float32 and imgs.min() >= 0 and imgs.max() <= 1
    assert len(set(a.y.tolist())) > 1  # not all from the first class


def test_npz_errors(tmp_path, npz):
    path, _, _ = npz
    with pytest.raises(DataError, match="not found"):
        Npz(str(tmp_path / "nope.npz")).load(5, 0)
    with pytest.raises(DataError, match="only 50 images"):
        Npz(str(path)).load(51, 0)
    with pytest.raises(DataError, match="positive"):
        seeded_subset(10, 0, 0)
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 3, dtype=object), y=np.zeros(3))
    with pytest.raises(DataError, match="cannot read"):
        Npz(str(tmp_path / "obj.npz")).load(2, 0)
    with pytest.raises(DataError, match=r"is a folder, not an .npz file .*dataset=imagefolder dataset.root="):
        Npz(str(tmp_path)).load(5, 0)
    with pytest.raises(DataError, match=r"is an .npz file, not a folder .*dataset=npz dataset.path="):
        ImageFolder(str(path)).load(5, 0)
    np.savez(tmp_path / "nokeys.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="needs arrays"):
        Npz(str(tmp_path / "nokeys.npz")).load(2, 0)


def test_npz_in_the_other_layout_or_with_one_hot_labels_says_what_to_change(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    y = np.arange(12) % 4
    np.savez(tmp_path / "nchw.npz", x=x.transpose(0, 3, 1, 2), y=y)
    with pytest.raises(DataError, match=r"looks NCHW, not NHWC: set dataset.layout=nchw"):
        Npz(str(tmp_path / "nchw.npz")).load(None, 0)
    assert Npz(str(tmp_path / "nchw.npz"), layout="nchw").load(None, 0).image_size == (3, 16, 16)
    np.savez(tmp_path / "nhwc.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"looks NHWC, not NCHW: set dataset.layout=nhwc"):
        Npz(str(tmp_path / "nhwc.npz"), layout="nchw").load(None, 0)
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(4)[y])
    with pytest.raises(DataError, match=r"1-D class indices, got shape \(12, 4\) \(one-hot\? store y.argmax\(1\)\)"):
        Npz(str(tmp_path / "onehot.npz")).load(None, 0)


def test_npz_labels_as_a_column_or_whole_floats_load_as_indices(tmp_path, npz):
    """Keras' cifar10.load_data gives labels of shape (N, 1); MATLAB exports give 3.0. Both are
    unambiguous and load as the same indices; 3.5 and NaN are still refused."""
    path, x, y = npz
    want = Npz(str(path)).load(20, seed=0)
    for name, labels in (("column", y[:, None].astype(np.uint8)), ("floats", y.astype(np.float32))):
        np.savez(tmp_path / f"{name}.npz", x=x, y=labels)
        got = Npz(str(tmp_path / f"{name}.npz")).load(20, seed=0)
        assert got.y.dtype == torch.int64 and torch.equal(got.y, want.y) and torch.equal(got.ids, want.ids)
    for name, labels in (("halves", y + 0.5), ("nan", np.where(y > 2, np.nan, y))):
        np.savez(tmp_path / f"{name}.npz", x=x, y=labels)
        with pytest.raises(DataError, match="labels must be integers"):
            Npz(str(tmp_path / f"{name}.npz")).load(20, seed=0)


def test_digits_split_disjoint_and_sized():
    from fragility.datasets.digits import digits_arrays

    xt, _ = digits_arrays("train")
    xs, _ = digits_arrays("test")
    assert len(xt) + len(xs) == 1797 and len(xs) == 539
    flat = {x.tobytes() for x in xt}
    assert sum(x.tobytes() in flat for x in xs) < 5  # a handful of digits are pixel-identical duplicates
    assert Digits("test").load(100, 0).image_size == (1, 8, 8)


def test_npz_damaged_files_are_one_line(tmp_path):
    """A truncated archive was a zipfile traceback; a damaged array only fails when it is read."""
    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(good, x=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8), y=np.zeros(64, np.int64))
    raw = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[:100])
    hurt = bytearray(raw)
    mid = len(raw) // 3
    hurt[mid : mid + 40] = bytes(40)  # inside the compressed x
    (tmp_path / "hurt.npz").write_bytes(bytes(hurt))
    np.save(tmp_path / "one.npy", np.zeros((3, 8, 8)))
    for name, why in (("cut.npz", "not a zip file"), ("hurt.npz", ""), ("one.npy", r"holds one array \(\.npy\)")):
        with pytest.raises(DataError, match=rf"{name}.*{why}") as err:
            Npz(str(tmp_path / name)).load(None, 0)
        assert "\n" not in str(err.value)
    assert len(Npz(str(good)).load(None, 0).y) == 64


def test_imagefolder_resizes_to_model_input(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = ImageFolder(str(tmp_path)).load(4, 0, input_size=(3, 16, 16))
    assert ds.x.shape == (4, 3, 16, 16) and ds.class_names == ["cat", "dog"]
    grey = ImageFolder(str(tmp_path)).load(2, 0, input_size=(1, 8, 8))
    assert grey.x.shape == (2, 1, 8, 8)
    with pytest.raises(DataError, match="not found"):
        ImageFolder(str(tmp_path / "nope")).load(2, 0)


def test_imagefolder_names_a_file_that_does_not_decode(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cat" / "ok.png")
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg: UnidentifiedImageError"):
        ImageFolder(str(tmp_path)).load(None, 0, input_size=(3, 8, 8))


def test_imagefolder_counts_each_file_once_through_a_symlink_loop(tmp_path):
    """torchvision follows symlinks: ``cat/loop -> ..`` listed each image ~40 times."""
    (tmp_path / "cat").mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(tmp_path / "cat" / f"{i}.png")
    (tmp_path / "cat" / "loop").symlink_to("..")
    with pytest.warns(
        RuntimeWarning, match=r"paths lead to files already listed \(symlinks\); each file counted once \(2 images\)"
    ):
        ds = ImageFolder(str(tmp_path)).load(None, 0, input_size=(3, 8, 8))
    assert len(ds.y) == 2 and sorted(int(v) for v in ds.x[:, 0, 0, 0]) == [0, 60]


def test_imagefolder_scales_16_bit_and_float_images(tmp_path):
    """torchvision's loader clips these at 255 (a 16-bit PNG came out almost all white): they are
    scaled to 8 bits instead, and a float image with NaN or values that are no intensities is refused."""
    (tmp_path / "cat").mkdir()
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "cat" / "deep.png")  # 16-bit greyscale PNG
    Image.fromarray((ramp / 65535).astype(np.float32), mode="F").save(tmp_path / "cat" / "unit.tiff")
    ds = ImageFolder(str(tmp_path)).load(None, 0, input_size=(3, 8, 8))
    expect = torch.from_numpy(np.round(ramp * (255 / 65535)).astype(np.uint8))
    for img in ds.x:
        assert (img == img[0]).all()  # grey: the same in each channel
        assert (img[0].int() - expect.int()).abs().max() <= 1
    Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F").save(tmp_path / "cat" / "nan.tiff")
    with pytest.raises(DataError, match=r"^cannot read image .*nan\.tiff: it holds NaN"):
        ImageFolder(str(tmp_path)).load(None, 0, input_size=(3, 8, 8))
    (tmp_path / "cat" / "nan.tiff").unlink()
    Image.fromarray(np.full((8, 8), -3.0, np.float32), mode="F").save(tmp_path / "cat" / "neg.tiff")
    with pytest.raises(DataError, match=r"neg\.tiff: mode F values in \[-3, -3\] are not pixel intensities"):
        ImageFolder(str(tmp_path)).load(None, 0, input_size=(3, 8, 8))


def test_torchvision_cifar10_on_local_files(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (20, 3 * 32 * 32), dtype=np.uint8)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": list(range(10)) * 2}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    import torchvision.datasets.cifar as tv_cifar

    # local stand-ins for the real files: skip only the md5 checks, keep torchvision's reader
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    ds = Cifar10(root=str(tmp_path)).load(8, 0)
    assert ds.x.shape == (8, 3, 32, 32) and ds.class_names == names
    i = int(ds.ids[0])
    assert torch.equal(ds.x[0], torch.from_numpy(data[i].reshape(3, 32, 32)))


def test_cifar10_missing_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="download=true"):
        Cifar10(root=str(tmp_path)).load(5, 0)


def test_align_labels_by_class_name():
    from fragility.datasets import ImageSet

    ds = ImageSet(torch.zeros(3, 3, 2, 2), torch.tensor([0, 1, 1]), torch.arange(3), ["toaster", "banana"], "f")
    model_names = [f"c{i}" for i in range(1000)]
    model_names[859], model_names[954] = "toaster", "banana"
    out = align_labels(ds, model_names)
    assert out.y.tolist() == [859, 954, 954]
    bad = ImageSet(torch.zeros(1, 3, 2, 2), torch.tensor([0]), torch.arange(1), ["x", "y", "z"], "f")
    with pytest.raises(DataError, match=r"do not match .*not a class of the model: 'x', 'y', 'z'"):
        align_labels(bad, ["a", "b"])
    # a folder named by index matches; only the unmatched name is reported
    mixed = ImageSet(torch.zeros(1, 3, 2, 2), torch.tensor([0]), torch.arange(1), ["1", "toaster", "q"], "f")
    with pytest.raises(DataError, match=r"not a class of the model: 'q'\)"):
        align_labels(mixed, model_names)
    # as many classes as the model, one renamed: the sorted folder order shifts, so the indices lie
    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    folders = sorted(["plane", *cifar[1:]])  # automobile, bird, ..., plane, ship, truck
    renamed = ImageSet(torch.zeros(1, 3, 2, 2), torch.tensor([0]), torch.arange(1), folders, "f")
    with pytest.raises(
        DataError, match=r"'plane' is not a class of the model, and 'automobile' is the model's class 1 but the dataset's class 0"
    ):
        align_labels(renamed, cifar)
    digits = ImageSet(torch.zeros(1, 3, 2, 2), torch.tensor([3]), torch.arange(1), [f"d{i}" for i in range(10)], "f")
    assert align_labels(digits, cifar).y.tolist() == [3]  # no name in common: the indices are all there is
