"""Datamodules on real files: fake CIFAR folders in torchvision's format, PNG ImageFolders, sklearn's digits."""

from __future__ import annotations

import dataclasses
import pickle
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from vvm.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageNetDataModule,
    SyntheticDataModule,
    UInt8ImageDataset,
    VisionDataModule,
)

# ---------------------------------------------------------------------------------------------------------------
# fake CIFAR in the official format: Python 2 pickles, whose str keys load as b"data" with encoding="bytes"


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as cPickle did for the official CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump_py2(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _batch(rng: np.random.Generator, n: int, label_keys: dict[bytes, int]) -> tuple[dict, np.ndarray]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    entry: dict = {
        b"batch_label": b"fake batch",
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    labels = {k: rng.integers(0, c, size=n).tolist() for k, c in label_keys.items()}
    entry.update(labels)
    return entry, data


def make_fake_cifar100(root: Path, n_train: int = 60, n_test: int = 24) -> dict[str, tuple[np.ndarray, list]]:
    rng = np.random.default_rng(100)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        entry, data = _batch(rng, n, {b"fine_labels": 100, b"coarse_labels": 20})
        _dump_py2(entry, folder / split)
        out[split] = (data, entry[b"fine_labels"])
    meta = {
        b"fine_label_names": [b"class_%d" % i for i in range(100)],
        b"coarse_label_names": [b"super_%d" % i for i in range(20)],
    }
    _dump_py2(meta, folder / "meta")
    return out


def make_fake_cifar10(root: Path, per_batch: int = 8, n_test: int = 20) -> dict[str, tuple[np.ndarray, list]]:
    rng = np.random.default_rng(10)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_data, train_labels = [], []
    for i in range(1, 6):
        entry, data = _batch(rng, per_batch, {b"labels": 10})
        _dump_py2(entry, folder / f"data_batch_{i}")
        train_data.append(data)
        train_labels += entry[b"labels"]
    entry, data = _batch(rng, n_test, {b"labels": 10})
    _dump_py2(entry, folder / "test_batch")
    _dump_py2(
        {
            b"label_names": [b"c%d" % i for i in range(10)],
            b"num_cases_per_batch": per_batch,
            b"num_vis": 3072,
        },
        folder / "batches.meta",
    )
    return {"train": (np.concatenate(train_data), train_labels), "test": (data, entry[b"labels"])}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("data")
    return root, make_fake_cifar100(root), make_fake_cifar10(root)


def _normalise(u8: torch.Tensor, dm: VisionDataModule) -> torch.Tensor:
    mean = torch.tensor(dm.mean).view(-1, 1, 1)
    std = torch.tensor(dm.std).view(-1, 1, 1)
    return (u8.float() / 255 - mean) / std


def _stack(ds) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(len(ds))])


def test_fake_cifar_is_in_the_official_pickle_format(cifar_root):
    root, c100, _ = cifar_root
    with open(root / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert set(raw) >= {b"data", b"fine_labels", b"coarse_labels"}
    np.testing.assert_array_equal(raw[b"data"], c100["test"][0])


def test_cifar_reader_matches_torchvision(cifar_root, monkeypatch):
    # torchvision re-checks the official md5s on every load (CIFAR10._check_integrity and _load_meta), which a
    # fixture cannot match: relax that check to "file exists" and compare everything else with its loader.
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file()
    )
    root = cifar_root[0]
    for cls, tv in (
        (CIFAR100DataModule, torchvision.datasets.CIFAR100),
        (CIFAR10DataModule, torchvision.datasets.CIFAR10),
    ):
        dm = cls(root=str(root), download=False)
        for split in ("train", "test"):
            ref = tv(str(root), train=split == "train", download=False)
            images, labels = dm.as_tensors(split)
            np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), ref.data)
            assert labels.tolist() == ref.targets
        assert dm.classes == ref.classes


@pytest.mark.parametrize("cls", [CIFAR100DataModule, CIFAR10DataModule])
def test_cifar_shapes_normalisation_and_eval_transform(cifar_root, cls):
    root, c100, c10 = cifar_root
    expected = c100 if cls is CIFAR100DataModule else c10
    dm = cls(root=str(root), download=False)
    for split in ("train", "test"):
        data, labels = expected[split]
        images, targets = dm.as_tensors(split)
        assert images.dtype == torch.uint8 and images.shape == (len(data), 3, 32, 32)
        assert targets.dtype == torch.int64 and targets.tolist() == labels
        np.testing.assert_array_equal(images.reshape(len(data), -1).numpy(), data)
        ds = dm.dataset(split)
        x, y = ds[3]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and y == labels[3]
        torch.testing.assert_close(_stack(ds), _normalise(images, dm))
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (len(expected["test"][0]), 3, 32, 32) and y.dtype == torch.int64


def _is_padded_crop(aug: torch.Tensor, ref: torch.Tensor, pad: int, flips: bool) -> bool:
    """Whether ``aug`` is a (possibly flipped) crop of ``ref`` padded with black by ``pad``, in [0, 1] pixels."""
    s = ref.shape[-1]
    for cand in [ref, ref.flip(-1)] if flips else [ref]:
        padded = F.pad(cand, (pad,) * 4, value=0.0)
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if torch.equal(padded[:, dy : dy + s, dx : dx + s], aug):
                    return True
    return False


@pytest.mark.parametrize("cls,pad,flips", [(CIFAR100DataModule, 4, True), (DigitsDataModule, 2, False)])
def test_augmentation_only_on_train(cifar_root, cls, pad, flips):
    dm = cls(root=str(cifar_root[0]), download=False, limit=8)
    images, _ = dm.as_tensors("train")
    plain, aug = dm.dataset("train"), dm.dataset("train", augment=True)
    torch.manual_seed(0)
    changed = 0
    for i in range(len(images)):
        assert torch.equal(plain[i][0], plain[i][0])  # eval transform: deterministic
        outs = [aug[i][0] for _ in range(4)]
        changed += any(not torch.equal(o, plain[i][0]) for o in outs)
        # augment in uint8 (black padding), then normalise: compare on the raw pixels
        raw = images[i].float() / 255
        for o in outs:
            back = o * torch.tensor(dm.std).view(-1, 1, 1) + torch.tensor(dm.mean).view(-1, 1, 1)
            back = (back * 255).round() / 255
            assert _is_padded_crop(back, raw, pad, flips), "augmentation is not a padded crop (+ flip)"
    assert changed >= len(images) // 2
    # the training loader augments, the CKA loader (test split) does not
    assert dm.train_dataloader().dataset is aug
    assert all(torch.equal(a, b) for a, b in zip(_stack(dm.cka_dataset()), _stack(dm.cka_dataset())))


def test_limit_is_a_fixed_subset_across_instances(cifar_root):
    root = str(cifar_root[0])
    a = CIFAR100DataModule(root=root, download=False, limit=10, seed=3)
    b = CIFAR100DataModule(root=root, download=False, limit=10, seed=3)
    c = CIFAR100DataModule(root=root, download=False, limit=10, seed=4)
    full_images, _ = CIFAR100DataModule(root=root, download=False).as_tensors("test")
    ia, la = a.as_tensors("test")
    ib, lb = b.as_tensors("test")
    assert len(a.dataset("test")) == len(ia) == 10
    assert torch.equal(ia, ib) and torch.equal(la, lb)
    assert not torch.equal(ia, c.as_tensors("test")[0])
    # as_tensors holds the same examples, in the same order, as the dataset the loaders read
    assert a.dataset("test").indices == b.dataset("test").indices
    assert torch.equal(ia, full_images[a.dataset("test").indices])
    torch.testing.assert_close(_stack(a.dataset("test")), _normalise(ia, a))


def test_missing_cifar_with_failing_download_names_path_attempt_and_way_out(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    # torchvision's real download path runs until it opens the url
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "nowhere"
    dm = CIFAR100DataModule(root=str(root), download=True)
    with pytest.raises(FileNotFoundError) as err:
        dm.dataset("test")
    msg = str(err.value)
    assert str(root / "cifar-100-python") in msg
    assert "cifar-100-python.tar.gz" in msg and "download" in msg and "URLError" in msg
    assert "no network in this test" in msg and "dataset=digits" in msg
    with pytest.raises(FileNotFoundError, match="dataset=digits"):
        CIFAR10DataModule(root=str(root), download=True).prepare_data()
    with pytest.raises(FileNotFoundError, match=r"download=false.*dataset=digits"):
        CIFAR10DataModule(root=str(root), download=False).as_tensors("train")


def test_cifar_num_classes_is_checked(cifar_root):
    with pytest.raises(ValueError, match="100 classes"):
        CIFAR100DataModule(root=str(cifar_root[0]), num_classes=10)


# ---------------------------------------------------------------------------------------------------------------
# ImageNet: ImageFolder of PNGs


def _image_folder(path: Path, classes: int, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (path / f"n{c:08d}").mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(40, 90, size=2)
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(
                path / f"n{c:08d}" / f"{i}.png"
            )


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("imagenet")
    _image_folder(base / "val", classes=3, per_class=2, seed=0)
    return base


def test_imagenet_val_folder(imagenet_root):
    dm = ImageNetDataModule(root=str(imagenet_root / "val"), num_classes=3, eval_batch_size=4)
    ds = dm.dataset("test")
    assert len(ds) == 6
    x, y = ds[5]
    assert x.shape == (3, 224, 224) and y == 2
    # Resize 256 + CenterCrop 224 + ImageNet normalisation, by hand
    img = Image.open(ds.samples[5][0]).convert("RGB")
    ref = torchvision.transforms.functional.center_crop(
        torchvision.transforms.functional.resize(img, 256), 224
    )
    ref = torchvision.transforms.functional.to_tensor(ref)
    torch.testing.assert_close(
        x, (ref - torch.tensor(dm.mean).view(3, 1, 1)) / torch.tensor(dm.std).view(3, 1, 1)
    )
    xb, yb = next(iter(dm.test_dataloader()))  # 6 images in balanced batches of at most 4: 3 + 3
    assert xb.shape == (3, 3, 224, 224)
    in_order = ImageNetDataModule(
        root=str(imagenet_root / "val"), num_classes=3, eval_batch_size=4, cka_shuffle=False
    )
    assert [yb.tolist() for _, yb in in_order.test_dataloader()] == [[0, 0, 1], [1, 2, 2]]
    with pytest.raises(NotImplementedError, match="imagenet"):
        dm.as_tensors("test")


def test_imagenet_errors_and_train_sibling(imagenet_root, tmp_path):
    with pytest.raises(ValueError, match="3 class folders.*num_classes=1000"):
        ImageNetDataModule(root=str(imagenet_root / "val")).dataset("test")
    with pytest.raises(FileNotFoundError, match=r"no train split at .*train.*dataset=digits"):
        ImageNetDataModule(root=str(imagenet_root / "val"), num_classes=3).dataset("train")
    missing = tmp_path / "imagenet" / "val"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*dataset.root.*dataset=digits"):
        ImageNetDataModule(root=str(missing)).dataset("test")
    _image_folder(tmp_path / "imagenet" / "train", classes=3, per_class=1, seed=1)
    missing.mkdir()
    dm = ImageNetDataModule(root=str(missing), num_classes=3)
    assert dm.train_root == str(tmp_path / "imagenet" / "train")
    x, _ = dm.dataset("train", augment=True)[0]
    assert x.shape == (3, 224, 224) and len(dm.dataset("train")) == 3


# ---------------------------------------------------------------------------------------------------------------
# digits


def test_digits_split_shapes_and_normalisation():
    dm = DigitsDataModule()
    train, test = dm.dataset("train"), dm.dataset("test")
    assert (len(train), len(test)) == (1437, 360)
    images, labels = dm.as_tensors("test")
    assert images.dtype == torch.uint8 and images.shape == (360, 3, 32, 32) and labels.dtype == torch.int64
    all_labels = torch.cat([labels, dm.as_tensors("train")[1]])
    expected = 0.2 * torch.bincount(all_labels).double()
    assert (torch.bincount(labels) - expected).abs().max() < 1  # stratified
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    # the hard-coded statistics are the train split's, rounded to 4 decimals
    raw_train = dm.as_tensors("train")[0].double() / 255
    assert dm.mean == (round(raw_train.mean().item(), 4),) * 3
    assert dm.std == (round(raw_train.std().item(), 4),) * 3
    x_train, x_test = _stack(train), _stack(test)
    assert x_train.shape == (1437, 3, 32, 32)
    assert abs(x_train.mean().item()) < 1e-3 and abs(x_train.std().item() - 1) < 1e-3
    assert abs(x_test.mean().item()) < 0.02 and abs(x_test.std().item() - 1) < 0.02
    torch.testing.assert_close(x_test, _normalise(images, dm))
    # the split is fixed: another instance (another run seed) reads the same images
    assert torch.equal(DigitsDataModule(seed=7).as_tensors("test")[0], images)


def test_digits_upsampling_keeps_the_digit():
    from sklearn.datasets import load_digits

    images, labels = DigitsDataModule().as_tensors("test")
    small = F.avg_pool2d(images[:, :1].float() / 255, 4)  # back to 8x8
    digits = load_digits()
    ref = torch.from_numpy(digits.images).float() / 16
    # every test image is close to one original 8x8 digit with the same label
    d = torch.cdist(small.flatten(1), ref.flatten(1))
    nearest = d.argmin(1)
    assert (torch.from_numpy(digits.target)[nearest] == labels).all()
    assert d.min(1).values.max() < 1.0


def test_digits_limit_and_loaders():
    a, b = DigitsDataModule(limit=50, seed=1, batch_size=16), DigitsDataModule(limit=50, seed=1)
    assert a.dataset("test").indices == b.dataset("test").indices
    assert torch.equal(a.as_tensors("test")[0], b.as_tensors("test")[0])
    x, y = next(iter(a.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


# ---------------------------------------------------------------------------------------------------------------
# synthetic, base, configs


def test_synthetic_as_tensors_matches_dataset():
    dm = SyntheticDataModule(train_size=64, test_size=32, limit=20)
    images, labels = dm.as_tensors("test")
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32) and labels.dtype == torch.int64
    x = _stack(dm.dataset("test"))
    torch.testing.assert_close(_normalise(images, dm), x, atol=0.5 / 255 / 0.25 + 1e-6, rtol=0)
    assert labels.tolist() == [dm.dataset("test")[i][1].item() for i in range(20)]


def test_uint8_dataset_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        UInt8ImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("name", ["cifar100", "cifar10", "imagenet", "digits", "synthetic"])
def test_dataset_configs_instantiate(name, cifar_root, imagenet_root, tmp_path):
    from compose import compose_settings
    from helpers import job_datamodule

    data = tmp_path / "data"
    if name.startswith("cifar"):
        data = cifar_root[0]
    overrides = [f"dataset={name}", f"paths.data={data}", "similarity.max_samples=5"]
    if name == "imagenet":
        overrides += [f"dataset.root={imagenet_root / 'val'}", "dataset.num_classes=3"]
    job = compose_settings(overrides, tmp_path / "run")
    assert {"num_classes", "root", "limit", "split"} <= {f.name for f in dataclasses.fields(job.dataset)}
    dm = job_datamodule(job)
    assert isinstance(dm, VisionDataModule) and dm.name == name
    assert dm.num_classes == job.dataset.num_classes and dm.split == "test"
    assert dm.cka_batches().n_examples == 5  # max_samples: a random subset of the split
