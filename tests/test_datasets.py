"""Readers of each dataset's official distribution format, on tiny files written in that format,
read back through .beton files and FFCV."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from rrdist.data.beton import prepare, split_path
from rrdist.data.datasets import get_spec
from rrdist.data.loader import image_loader
from rrdist.errors import DataError

QUIET = dict(log=lambda *a: None)


def read_back(manifest, split):
    loader = image_loader(split_path(manifest, split), 5, train=False, drop_last=False)
    xs, ys = zip(*[(x.clone(), y.clone()) for x, y in loader])
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def random_images(rng, n, size):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_cifar100(root, rng):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    truth = {}
    for split, n in (("train", 12), ("test", 7)):
        images = random_images(rng, n, 32)
        fine = rng.integers(0, 100, n)
        coarse = fine // 5
        d = {b"data": images.transpose(0, 3, 1, 2).reshape(n, -1), b"fine_labels": fine.tolist(),
             b"coarse_labels": coarse.tolist()}
        (folder / split).write_bytes(pickle.dumps(d))
        truth[split] = (images, fine, coarse)
    return truth


def test_cifar100_fine_and_coarse_labels(tmp_path):
    truth = write_cifar100(tmp_path, np.random.default_rng(0))
    fine = prepare("cifar100", tmp_path, **QUIET)
    coarse = prepare("cifar100-20", tmp_path, **QUIET)
    assert fine["num_classes"] == 100 and coarse["num_classes"] == 20 and fine["image_size"] == 32
    for split in ("train", "test"):
        images, labels = read_back(fine, split)
        assert np.array_equal(images, truth[split][0]) and np.array_equal(labels, truth[split][1])
        images, labels = read_back(coarse, split)
        assert np.array_equal(images, truth[split][0]) and np.array_equal(labels, truth[split][2])
    assert fine["classes"][3] == "fine3" and coarse["classes"][19] == "coarse19"


def write_stl10(root, rng):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    truth = {}
    for split, n in (("train", 4), ("test", 3), ("unlabeled", 5)):
        images = random_images(rng, n, 96)
        images[0, 0, 1] = [255, 0, 0]  # one marked pixel (row 0, column 1) to catch a transposed reader
        images[0, 1, 0] = [0, 0, 255]
        images.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")  # column-major, as distributed
        labels = rng.integers(1, 11, n).astype(np.uint8)
        if split != "unlabeled":
            labels.tofile(folder / f"{split}_y.bin")
        truth[split] = (images, labels.astype(np.int64) - 1)
    return truth


def test_stl10_binary_with_unlabeled_split_for_pretraining(tmp_path):
    truth = write_stl10(tmp_path, np.random.default_rng(1))
    manifest = prepare("stl10", tmp_path, **QUIET)
    assert manifest["image_size"] == 96 and manifest["pretrain_split"] == "unlabeled"
    assert manifest["classes"][0] == "c0"
    for split in ("train", "test", "unlabeled"):
        images, labels = read_back(manifest, split)
        assert np.array_equal(images, truth[split][0]), split
        if split == "unlabeled":
            assert (labels == -1).all()
        else:
            assert np.array_equal(labels, truth[split][1])
    assert tuple(images[0, 0, 1]) != tuple(images[0, 1, 0])


def write_tiny_imagenet(root, rng):
    folder = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\teuropean fire salamander\n"
                                      "n01641577\tbullfrog, Rana catesbeiana\nn99999999\tunused\n")
    train = {}
    for w in wnids:
        (folder / "train" / w / "images").mkdir(parents=True)
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(2):
            img = random_images(rng, 1, 64)[0]
            Image.fromarray(img).save(folder / "train" / w / "images" / f"{w}_{i}.JPEG")
    lines = []
    for i, w in enumerate([wnids[2], wnids[0], wnids[1], wnids[2]]):
        Image.fromarray(random_images(rng, 1, 64)[0]).save(folder / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
        train[f"val_{i}.JPEG"] = wnids.index(w)
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder, train


def test_tiny_imagenet_official_layout_read_as_is(tmp_path):
    folder, val_labels = write_tiny_imagenet(tmp_path, np.random.default_rng(2))
    manifest = prepare("tiny-imagenet", tmp_path, **QUIET)
    assert manifest["image_size"] == 64 and manifest["num_classes"] == 3
    assert manifest["classes"] == ["goldfish", "european fire salamander", "bullfrog"]
    images, labels = read_back(manifest, "train")
    assert images.shape == (6, 64, 64, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    images, labels = read_back(manifest, "test")
    assert labels.tolist() == [val_labels[f"val_{i}.JPEG"] for i in range(4)]
    want = np.asarray(Image.open(folder / "val" / "images" / "val_2.JPEG").convert("RGB"))
    assert np.array_equal(images[2], want)


def test_tiny_imagenet_bad_annotation_is_one_clear_error(tmp_path):
    folder, _ = write_tiny_imagenet(tmp_path, np.random.default_rng(3))
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="val_annotations.txt"):
        prepare("tiny-imagenet", tmp_path, **QUIET)


def test_slimagenet_folders_with_val(tmp_path):
    rng = np.random.default_rng(4)
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(random_images(rng, 1, 64)[0]).save(tmp_path / split / c / f"{i}.png")
    manifest = prepare("slimagenet", tmp_path, **QUIET)
    assert set(manifest["splits"]) == {"train", "val", "test"} and manifest["image_size"] == 64
    images, labels = read_back(manifest, "val")
    assert images.shape == (4, 64, 64, 3) and labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("name,size", [("cifar100", 32), ("cifar100-20", 32), ("stl10", 96), ("tiny-imagenet", 64),
                                       ("slimagenet", 64)])
def test_crop_size_per_dataset_follows_the_paper(name, size):
    assert get_spec(name).image_size == size


@pytest.mark.parametrize("name", ["cifar100", "stl10", "tiny-imagenet", "slimagenet"])
def test_missing_files_name_what_is_expected(tmp_path, name):
    with pytest.raises(DataError, match=f"no .* found under {tmp_path}"):
        prepare(name, tmp_path, **QUIET)


def test_linear_evaluation_on_another_dataset_is_domain_transfer(tmp_path, digits_root):
    """A digits backbone evaluated on CIFAR-100 files (both 32x32): the transfer setting of Table 1."""
    import json

    from rrdist.methods import make_config
    from rrdist.eval.linear import LinearSettings, evaluate_linear
    from rrdist.models import build_backbone
    from rrdist.models.backbone_file import save_backbone

    write_cifar100(tmp_path / "c100", np.random.default_rng(5))
    run = tmp_path / "run"
    run.mkdir()
    cfg = make_config(dataset="digits", root=str(digits_root), out=str(run))
    (run / "config.yaml").write_text(cfg.to_yaml())
    save_backbone(run, build_backbone("conv4"), cfg.to_dict(), 1)
    for name in ("cifar100", "cifar100-20"):
        result = evaluate_linear(run, dataset=name, root=str(tmp_path / "c100"), settings=LinearSettings(epochs=2),
                                 device="cpu", log=lambda *a: None)
        saved = json.loads((run / "eval" / f"linear-trained-{name}.json").read_text())
        assert saved["dataset"] == name and saved["pretrain_dataset"] == "digits"
        assert saved["n_test"] == 7 and saved["test_accuracy"] == result["test_accuracy"]
