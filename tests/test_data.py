"""Readers, .beton round trips through real FFCV, manifest reuse and corrupt-file detection."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from rrdist.data.beton import load_manifest, prepare, split_path
from rrdist.data.datasets import CIFAR10_CLASSES, read_digits
from rrdist.data.loader import image_loader
from rrdist.errors import DataError

QUIET = dict(log=lambda *a: None)


def read_back(manifest, split):
    loader = image_loader(split_path(manifest, split), 7, train=False, drop_last=False)
    xs, ys = zip(*[(x.clone(), y.clone()) for x, y in loader])
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def make_tree(root, classes, per_class, size, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in per_class.items():
        imgs, labels = [], []
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(a).save(root / split / name / f"{i:04d}.png")  # lossless
                imgs.append(a)
                labels.append(c)
        arrays[split] = (np.stack(imgs), np.array(labels))
    return arrays


def test_imagefolder_round_trip(tmp_path):
    arrays = make_tree(tmp_path, ["cat", "dog", "emu"], {"train": 5, "test": 2}, 16)
    manifest = prepare("imagefolder", tmp_path, **QUIET)
    assert manifest["num_classes"] == 3 and manifest["image_size"] == 16
    assert manifest["classes"] == ["cat", "dog", "emu"]
    for split in ("train", "test"):
        x, y = read_back(manifest, split)
        assert np.array_equal(x, arrays[split][0])
        assert np.array_equal(y, arrays[split][1])
    # statistics measured on the training split
    assert np.allclose(manifest["mean"], arrays["train"][0].reshape(-1, 3).mean(0) / 255, atol=1e-3)


def test_cifar10_image_tree_uses_cifar_class_order(tmp_path):
    arrays = make_tree(tmp_path / "cifar10-jpg", sorted(CIFAR10_CLASSES), {"train": 1, "test": 1}, 32)
    manifest = prepare("cifar10", tmp_path, **QUIET)
    assert manifest["classes"] == CIFAR10_CLASSES
    x, y = read_back(manifest, "test")
    assert sorted(y.tolist()) == list(range(10))
    # the image labelled c is the one saved in the folder of CIFAR-10's class c
    src = dict(zip(sorted(CIFAR10_CLASSES), arrays["test"][0]))
    for img, label in zip(x, y):
        assert np.array_equal(img, src[CIFAR10_CLASSES[label]])


def test_cifar10_python_pickles(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        with open(batches / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
        written[name] = (data.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    with open(batches / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)
    manifest = prepare("cifar10", tmp_path, **QUIET)
    assert manifest["splits"]["train"]["n"] == 15 and manifest["splits"]["test"]["n"] == 3
    assert manifest["mean"] == [0.491, 0.482, 0.447]  # the paper's CIFAR-10 statistics
    x, y = read_back(manifest, "test")
    assert np.array_equal(x, written["test_batch"][0])
    assert y.tolist() == written["test_batch"][1]
    x, _ = read_back(manifest, "train")
    assert np.array_equal(x[:3], written["data_batch_1"][0])


def test_digits_reader():
    splits = read_digits(None, False, None)
    assert splits["train"].images.shape == (1437, 32, 32, 3)
    assert splits["test"].images.shape == (360, 32, 32, 3)
    assert splits["train"].images.dtype == np.uint8
    # stratified: every class in both splits, in the same proportions within 2 points
    for c in range(10):
        assert abs((splits["train"].labels == c).mean() - (splits["test"].labels == c).mean()) < 0.02
    # fixed split: the same every time
    assert np.array_equal(read_digits(None, False, None)["test"].labels, splits["test"].labels)


def test_prepare_reuses_valid_files(tmp_path):
    prepare("digits", tmp_path, **QUIET)
    beton = tmp_path / "ffcv" / "digits" / "train.beton"
    before = beton.stat().st_mtime_ns
    said = []
    prepare("digits", tmp_path, log=said.append)
    assert beton.stat().st_mtime_ns == before
    assert said and said[0].startswith("reusing")


def corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how,word", [("truncate", "truncated"), ("flip", "corrupt")])
def test_corrupt_beton_is_detected_and_rewritten(tmp_path, how, word):
    manifest = prepare("digits", tmp_path, **QUIET)
    beton = tmp_path / "ffcv" / "digits" / "train.beton"
    good = read_back(manifest, "train")
    corrupt(beton, how)
    with pytest.raises(DataError, match=word) as err:
        load_manifest("digits", tmp_path)
    assert "rrdist data prepare digits" in str(err.value) and "\n" not in str(err.value)
    prepare("digits", tmp_path, **QUIET)  # a damaged file is not reused: it is written again
    again = read_back(load_manifest("digits", tmp_path), "train")
    assert np.array_equal(again[0], good[0]) and np.array_equal(again[1], good[1])


def test_beton_without_manifest_is_reported(tmp_path):
    bad = tmp_path / "junk.beton"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="corrupt"):
        image_loader(bad, 4, train=False)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare("cifar10", tmp_path / "nowhere", **QUIET)
    with pytest.raises(DataError, match="no CIFAR-10 found"):
        prepare("cifar10", tmp_path, **QUIET)
    with pytest.raises(DataError, match="no prepared"):
        load_manifest("cifar10", tmp_path)


def test_kept_batches_stay_intact(digits_root):
    """FFCV reuses its buffers; labels kept across batches must still be the split's labels."""
    from rrdist.data.datasets import read_digits

    manifest = load_manifest("digits", digits_root)
    loader = image_loader(split_path(manifest, "test"), 64, train=False, drop_last=False)
    kept = [y for _, y in loader]  # no clone: the loader's labels must already be safe to keep
    assert np.array_equal(torch.cat(kept).numpy(), read_digits(None, False, None)["test"].labels)


def test_loader_gives_each_images_position_in_the_split(tmp_path):
    """Indices (for methods that label images, e.g. DeepCluster) point at the images drawn."""
    manifest = prepare("digits", tmp_path, **QUIET)
    truth = read_digits(None, False, None)["train"]
    ordered = image_loader(split_path(manifest, "train"), 100, train=False, drop_last=False, indices=True)
    idx = torch.cat([i for _, _, i in ordered])
    assert torch.equal(idx, torch.arange(len(truth.labels)))
    shuffled = image_loader(split_path(manifest, "train"), 64, train=True, seed=3, indices=True)
    images, labels, idx = next(iter(shuffled))
    assert not torch.equal(idx, torch.arange(64))  # a random order ...
    assert torch.equal(labels, torch.from_numpy(truth.labels[idx.numpy()]).long())  # ... of the right images
    assert np.array_equal(images.numpy(), truth.images[idx.numpy()])
