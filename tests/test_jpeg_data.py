"""Image trees of any size on FFCV's JPEG path: streamed prepare, one decode per image into a whole-
image base, views drawn in each image's own size (torchvision's rule), the ImageNet layouts, bad
files refused in one line, and a pretraining on 1 and 2 workers with the same trace."""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rrdist.cli import main
from rrdist.data.augment import KViewAugment
from rrdist.data.beton import load_manifest, prepare, sha256, split_path
from rrdist.data.keyed import ImageDraws
from rrdist.data.loader import base_side, decoding, image_loader, stored_sizes

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def write_tree(root: Path, train: int, test: int, seed: int = 0, folders=None) -> dict[Path, tuple[int, int]]:
    """JPEGs of random sizes (40-140 px a side, any aspect), a colour per class; {path: (h, w)}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = {}
    names = folders or [f"class{c}" for c in range(len(COLOURS))]
    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(40, 141, size=2))
                pixels = rng.integers(0, 60, size=(h, w, 3)) + np.array(COLOURS[c % 4]) * (0.5 + 0.5 * rng.random())
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
                sizes[folder / f"{i:04d}.jpg"] = (h, w)
    return sizes


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg-tree")
    sizes = write_tree(root, train=60, test=15)
    manifest = prepare("imagefolder", root, storage="jpeg", max_side=96, image_size=32, log=lambda *a: None)
    return root, sizes, manifest


def test_prepare_keeps_every_images_own_aspect_within_the_maximum_side(tree):
    root, sizes, manifest = tree
    assert manifest["storage"] == {"format": "jpeg", "max_side": 96, "quality": 90}
    assert manifest["image_size"] == 32 and manifest["splits"]["train"]["n"] == 240
    assert manifest["splits"]["test"]["n"] == 60 and manifest["eval_crop"] == 224 / 256
    stored = stored_sizes(split_path(manifest, "train"))
    files = sorted(p for p in sizes if p.parts[-3] == "train")  # the file order: class folders, then names
    for (h, w), path in zip(stored.tolist(), files):
        oh, ow = sizes[path]
        scale = min(1.0, 96 / max(oh, ow))
        assert (h, w) == (max(1, round(oh * scale)), max(1, round(ow * scale))), path
    assert (stored > 96).sum() == 0 and len({tuple(s) for s in stored.tolist()}) > 100  # any size, none above 96
    # prepared again with the same settings: reused; with another maximum side: written again
    assert prepare("imagefolder", root, storage="jpeg", max_side=96, image_size=32, log=lambda *a: None)["splits"] \
        == manifest["splits"]


def reference_crop(height: int, width: int, u: list[float], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params written out, its random numbers taken from u:
    ten (area, log-ratio) tries, then top and left; no valid try: the centre at the nearest ratio."""
    area = height * width
    for t in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[t])
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[10 + t])
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return math.floor(u[20] * (height - h + 1)), math.floor(u[21] * (width - w + 1)), h, w
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def test_crops_of_images_of_any_size_follow_torchvisions_rule_in_each_images_own_size():
    aug = KViewAugment(32, (0.5,) * 3, (0.25,) * 3)
    n = 3000
    g = torch.Generator().manual_seed(0)
    heights = torch.randint(20, 500, (n,), generator=g)
    widths = torch.randint(20, 500, (n,), generator=g)
    heights[:200], widths[:200] = 30, 400  # very wide and very tall images: the fallback crop
    heights[200:400], widths[200:400] = 400, 30
    u = ImageDraws(3, 1, torch.arange(n)).view_uniforms(1, 33).double().float()
    p = aug.params(u, heights, widths)
    got = torch.stack([p.top, p.left, p.height, p.width], 1).long().tolist()
    want = [reference_crop(int(h), int(w), u[i].double().tolist()) for i, (h, w) in enumerate(zip(heights, widths))]
    mismatched = [i for i in range(n) if got[i] != list(want[i])]
    assert len(mismatched) <= n // 500, mismatched[:5]  # float32 against float64 rounding at .5: a few at most
    # the same distributions as torchvision's own RandomResizedCrop on the same sizes
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    tv = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, int(h), int(w)), [0.08, 1.0], [3 / 4, 4 / 3])
                       for h, w in zip(heights.tolist(), widths.tolist())], dtype=torch.float64)
    ours = torch.tensor(got, dtype=torch.float64)
    area = heights.double() * widths.double()

    def ks(a, b):
        grid = torch.cat([a, b]).unique()
        cdf = lambda x: torch.searchsorted(x.sort().values.contiguous(), grid, right=True) / len(x)  # noqa: E731
        return float((cdf(a) - cdf(b)).abs().max())

    assert ks(ours[:, 2] * ours[:, 3] / area, tv[:, 2] * tv[:, 3] / area) < 0.04  # scale
    assert ks(torch.log(ours[:, 3] / ours[:, 2]), torch.log(tv[:, 3] / tv[:, 2])) < 0.04  # aspect


def test_a_view_from_the_stretched_base_is_the_view_of_the_original_image():
    """A crop drawn in the image's own size and read from the base (the whole image stretched to a
    square) samples the same points of the image: on a smooth image the two views agree."""
    h, w, base = 90, 150, 64
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    original = torch.stack([y, x, 0.5 * (x + y)], -1)  # a linear ramp per channel
    stretched = torch.nn.functional.interpolate(original.permute(2, 0, 1)[None], size=(base, base), mode="bilinear",
                                                align_corners=True)[0].permute(1, 2, 0)
    aug = KViewAugment(24, (0.0,) * 3, (1.0,) * 3, jitter_p=0.0, gray_p=0.0)
    u = ImageDraws(0, 0, torch.arange(50)).view_uniforms(1, 33)
    sizes = torch.tensor([[h, w]] * 50)
    p = aug.onto_base(aug.params(u, sizes[:, 0], sizes[:, 1]), sizes[:, 0], sizes[:, 1], base, base)
    from_base = aug.apply((stretched * 255).round().to(torch.uint8)[None].expand(50, -1, -1, -1), p, 1)
    q = aug.params(u, h, w)
    from_original = aug.apply((original * 255).round().to(torch.uint8)[None].expand(50, -1, -1, -1), q, 1)
    assert (from_base - from_original).abs().max() < 0.03  # a ramp survives the stretch: rounding only
    assert not torch.allclose(from_base[0], from_base[1], atol=0.05)  # the views differ from each other


def test_the_training_loader_gives_each_image_whole_and_its_size(tree):
    _, _, manifest = tree
    path = split_path(manifest, "train")
    loader = image_loader(path, 16, train=True, indices=True, **decoding(manifest))
    side = base_side(32, manifest["largest_side"])
    images, labels, indices = next(iter(loader))
    assert images.shape == (16, side, side, 3) and loader.sizes.shape == (240, 2)
    assert torch.equal(loader.sizes, torch.from_numpy(stored_sizes(path)))
    # a class's colour fills the whole base: nothing cut at the edges (the red class: red everywhere)
    red = images[labels == 0].float()
    if len(red):
        assert float(red[..., 0].mean()) > float(red[..., 2].mean()) + 50
    test = image_loader(split_path(manifest, "test"), 16, train=False, drop_last=False, **decoding(manifest))
    assert next(iter(test))[0].shape == (16, 32, 32, 3) and test.sizes is None  # the evaluation's centre crop


def prepare_cli(capsys, root: Path, *extra: str) -> tuple[int, str]:
    code = main(["data", "prepare", "imagefolder", "--root", str(root), "--storage", "jpeg", "--max-side", "64",
                 *extra])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("damage,message", [
    ("corrupt", "cannot read image"),
    ("truncated", "cannot read image"),
    ("empty", "holds no images"),
    ("dangling", "cannot read"),
])
def test_a_bad_file_is_one_line_and_the_prepared_data_stays(capsys, tmp_path, damage, message):
    write_tree(tmp_path, train=6, test=3)
    assert prepare_cli(capsys, tmp_path)[0] == 0
    folder = tmp_path / "ffcv" / "imagefolder"
    before = {p.name: sha256(p) for p in folder.iterdir()}
    victim = tmp_path / "test" / "class2" / "0001.jpg"  # in the test split: train is written first
    if damage == "corrupt":
        victim.write_bytes(os.urandom(3000))
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:len(victim.read_bytes()) // 2])
    elif damage == "empty":
        shutil.rmtree(tmp_path / "train" / "class3")
        (tmp_path / "train" / "class3").mkdir()
    else:
        victim.unlink()
        victim.symlink_to(tmp_path / "nowhere.jpg")
    code, err = prepare_cli(capsys, tmp_path, "--force")
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    if damage in ("corrupt", "truncated"):
        assert str(victim) in err
    assert {p.name: sha256(p) for p in folder.iterdir()} == before  # nothing written, nothing left behind


def test_settings_out_of_range_are_refused_before_anything_is_read(capsys, tmp_path):
    write_tree(tmp_path, train=2, test=1)
    for flags, message in ((["--max-side", "8"], "--max-side must be"), (["--quality", "0"], "--quality must be"),
                           (["--storage", "png"], "unknown --storage"), (["--classes", str(tmp_path / "no.txt")],
                                                                           "cannot read the class list")):
        code, err = prepare_cli(capsys, tmp_path, *flags)
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "ffcv").exists()
    code = main(["data", "prepare", "digits", "--root", str(tmp_path), "--storage", "jpeg"])
    assert code == 2 and "cannot be stored as JPEG" in capsys.readouterr().err


def test_imagenet_layouts_and_a_class_subset(capsys, tmp_path):
    """ILSVRC-2012 as distributed on Kaggle (val/ flat, labelled by LOC_val_solution.csv) and with val/
    in class folders; --classes keeps a subset; imagenet100 names the classes it misses."""
    wnids = ["n01440764", "n01443537", "n01484850"]
    write_tree(tmp_path / "in", train=3, test=2, folders=wnids)
    flat = tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC"
    shutil.copytree(tmp_path / "in" / "train", flat / "train")
    (flat / "val").mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    for i, image in enumerate(sorted((tmp_path / "in" / "test").glob("*/*.jpg"))):
        shutil.copy(image, flat / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
        rows.append(f"ILSVRC2012_val_{i:08d},{image.parent.name} 1 2 3 4")
    (tmp_path / "kaggle" / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "in" / "val").mkdir()
    for folder in (tmp_path / "in" / "test").iterdir():
        shutil.move(str(folder), tmp_path / "in" / "val" / folder.name)
    (tmp_path / "in" / "test").rmdir()
    keep = tmp_path / "keep.txt"
    keep.write_text("# two of three\nn01443537\nn01484850\n")
    quiet = dict(log=lambda *a: None, max_side=64)
    a = prepare("imagenet", tmp_path / "kaggle", classes=keep, **quiet)
    b = prepare("imagenet", tmp_path / "in", classes=keep, **quiet)
    for m in (a, b):
        assert m["classes"] == wnids[1:] and m["class_list"] == wnids[1:] and m["image_size"] == 224
        assert (m["splits"]["train"]["n"], m["splits"]["test"]["n"]) == (6, 4) and m["storage"]["format"] == "jpeg"
    labels = [y for _, y in image_loader(split_path(a, "test"), 4, train=False, drop_last=False, **decoding(a))]
    assert sorted(torch.cat(labels).tolist()) == [0, 0, 1, 1]
    code = main(["data", "prepare", "imagenet100", "--root", str(tmp_path / "in")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "100 of the classes asked for have no folder" in err and len(err.splitlines()) == 1


@pytest.mark.usefixtures("ray_session")
def test_pretraining_on_1_and_2_workers_gives_the_same_trace_and_a_linear_evaluation(tree, tmp_path, monkeypatch):
    from rrdist.eval.linear import evaluate_linear
    from rrdist.methods import make_config
    from rrdist.train.trainer import pretrain

    root, _, manifest = tree
    traces = {}
    for workers in (1, 2):
        monkeypatch.setenv("RRDIST_TRACE", str(tmp_path / f"trace{workers}"))
        cfg = make_config(dataset="imagefolder", root=str(root), backbone="conv4", K=4, epochs=2, batch_size=32,
                          workers=workers, precision="fp64", out=str(tmp_path / f"run{workers}"),
                          in_process=workers == 1)  # one worker: the same loop in this process
        pretrain(cfg, log=lambda *a: None)
        traces[workers] = {}
        for epoch in (1, 2):
            ranks = [json.loads((tmp_path / f"trace{workers}" / f"epoch{epoch}-rank{r}.json").read_text())
                     for r in range(workers)]
            for entries in zip(*ranks):
                views = {i: v for e in entries for i, v in zip(e["images"], e["views"])}
                traces[workers][(epoch, entries[0]["step"])] = (sum(e["loss"] for e in entries) / workers, views)
    assert len(traces[1]) == 2 * (240 // 32) and traces[1].keys() == traces[2].keys()
    for step, (loss, views) in traces[1].items():
        assert views == traces[2][step][1], step  # every image's views, bit for bit
        assert abs(loss - traces[2][step][0]) < 1e-9 * max(1.0, abs(loss)), step
    result = evaluate_linear(tmp_path / "run2", log=lambda *a: None)
    assert result["test_accuracy"] > 0.6  # four colour classes; chance is 0.25


def test_features_written_to_disk_batch_by_batch_equal_those_in_memory_and_train_the_same(tree, tmp_path, monkeypatch):
    """Linear evaluation at ImageNet's scale: features extracted to files (mapped, never whole in
    memory) are those of the in-memory extraction, and the classifier trained from the mapped files
    batch by batch equals the one trained from memory."""
    from rrdist.data.features import extract, extract_to_files, load_feature_files
    from rrdist.eval import linear
    from rrdist.models import build_backbone

    _, _, manifest = tree
    torch.manual_seed(0)
    backbone = build_backbone("conv4")
    prep = KViewAugment(32, tuple(manifest["mean"]), tuple(manifest["std"]))
    beton = split_path(manifest, "train")
    in_memory, labels = extract(backbone, beton, prep, torch.device("cpu"), batch_size=64, **decoding(manifest))
    extract_to_files(backbone, beton, prep, torch.device("cpu"), tmp_path / "f", batch_size=64, **decoding(manifest))
    mapped, mapped_labels = load_feature_files(tmp_path / "f")
    assert isinstance(np.load(tmp_path / "f" / "features.npy", mmap_mode="c"), np.memmap)
    assert torch.equal(mapped, in_memory) and torch.equal(mapped_labels, labels)
    settings = linear.LinearSettings(epochs=3, batch_size=32)
    resident = linear.fit_linear(in_memory, labels, 4, settings, torch.device("cpu"))
    monkeypatch.setattr(linear, "RESIDENT", 0)  # as if the features were larger than memory
    streamed = linear.fit_linear(mapped, mapped_labels, 4, settings, torch.device("cpu"))
    assert torch.equal(resident.weight, streamed.weight) and torch.equal(resident.bias, streamed.bias)
    assert linear.accuracy(streamed, mapped, mapped_labels, torch.device("cpu"), chunk=7) == \
        linear.accuracy(resident, in_memory, labels, torch.device("cpu"))


@pytest.mark.parametrize("method", ["simclr", "rotation", "supervised", "deepcluster", "infomax"])
def test_every_method_trains_on_images_of_any_size_and_resumes(tree, tmp_path, method):
    """Each trained method on the JPEG path (relational reasoning: the 1-and-2-worker test), run in
    this process; a second epoch resumes from the first's checkpoint."""
    from rrdist.methods import make_config
    from rrdist.train.trainer import pretrain

    root, _, _ = tree
    settings = dict(dataset="imagefolder", root=str(root), backbone="conv4", method=method, epochs=1,
                    batch_size=32, in_process=True, out=str(tmp_path / "run"))
    first = pretrain(make_config(**settings), log=lambda *a: None)
    assert first.metrics["epoch"] == 1 and math.isfinite(first.metrics.get("loss", 0.0))
    again = pretrain(make_config(**{**settings, "epochs": 2}), log=lambda *a: None)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines if "event" not in m] == [1, 2] and again.metrics["epoch"] == 2


def test_a_damaged_manifest_setting_is_one_line(capsys, tmp_path):
    write_tree(tmp_path, train=2, test=1)
    assert prepare_cli(capsys, tmp_path)[0] == 0
    path = tmp_path / "ffcv" / "imagefolder" / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in (("eval_crop", "most"), ("eval_crop", 0), ("storage", "jpeg")):
        path.write_text(json.dumps({**manifest, key: value}))
        with pytest.raises(Exception) as err:
            load_manifest("imagefolder", tmp_path)
        assert key in str(err.value) and "--force" in str(err.value) and "\n" not in str(err.value)


def test_prepare_again_without_storage_flags_keeps_the_data_as_it_was_prepared(capsys, tmp_path):
    write_tree(tmp_path, train=3, test=1)
    assert prepare_cli(capsys, tmp_path, "--quality", "80")[0] == 0
    folder = tmp_path / "ffcv" / "imagefolder"
    before = {p.name: sha256(p) for p in folder.iterdir()}
    assert main(["data", "prepare", "imagefolder", "--root", str(tmp_path)]) == 0  # no --storage: as prepared
    assert {p.name: sha256(p) for p in folder.iterdir()} == before
    assert json.loads((folder / "manifest.json").read_text())["storage"] == {"format": "jpeg", "max_side": 64,
                                                                             "quality": 80}
    code, err = prepare_cli(capsys, tmp_path, "--max-side", "0")
    assert code == 2 and "--max-side must be" in err
