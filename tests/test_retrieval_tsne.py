"""Retrieval against a brute-force reference, and both evaluations end to end on a run folder."""

import json

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rrdist.methods import make_config
from rrdist.eval.retrieval import evaluate_retrieval, retrieval_scores, sample_queries
from rrdist.eval.tsne import evaluate_tsne
from rrdist.models import build_backbone
from rrdist.models.backbone_file import save_backbone


def brute_force(features, labels, queries, k):
    """Per query: every other image's distance, sorted; the share of the k nearest in its class."""
    hits, per_class = [], {}
    for q in queries.tolist():
        dists = sorted((float(((features[q] - features[j]) ** 2).sum()), j) for j in range(len(labels)) if j != q)
        same = [int(labels[j] == labels[q]) for _, j in dists[:k]]
        hits.append(sum(same) / k)
        per_class.setdefault(int(labels[q]), []).append(sum(same) / k)
    return sum(hits) / len(hits), {c: sum(v) / len(v) for c, v in per_class.items()}


def test_retrieval_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (120,), generator=g)
    features = torch.randn(120, 8, generator=g) + labels[:, None] * 0.7  # classes partly separated
    queries = sample_queries(labels, 10, seed=1)
    assert len(queries) == 40 and all(int((labels[queries] == c).sum()) == 10 for c in range(4))
    got = retrieval_scores(features, labels, queries, 4, ks=(5, 30))
    for k in (5, 30):
        want, want_per_class = brute_force(features, labels, queries, k)
        assert abs(got[f"top{k}"]["accuracy"] - want) < 1e-12
        for c in range(4):
            assert abs(got[f"top{k}"]["per_class"][c] - want_per_class[c]) < 1e-12
        confusion = np.array(got[f"top{k}"]["confusion"])
        assert np.allclose(confusion.sum(1), 1.0) and np.allclose(np.diag(confusion), got[f"top{k}"]["per_class"])


def random_run(tmp_path, digits_root):
    run = tmp_path / "run"
    run.mkdir()
    cfg = make_config(dataset="digits", root=str(digits_root), out=str(run))
    (run / "config.yaml").write_text(cfg.to_yaml())
    torch.manual_seed(0)
    save_backbone(run, build_backbone("conv4"), cfg.to_dict(), 1)
    return run


def test_retrieval_and_tsne_write_results_pictures_and_events(tmp_path, digits_root):
    from PIL import Image

    run = random_run(tmp_path, digits_root)
    r = evaluate_retrieval(run, per_class=20, device="cpu", log=lambda *a: None)
    saved = json.loads((run / "eval" / "retrieval-digits.json").read_text())
    assert saved["queries"] == 200 and 0 < saved["top10"]["accuracy"] <= 1 and saved["settings"]["per_class"] == 20
    assert saved["top10"]["accuracy"] > 0.15  # random conv4 features still group digits above chance
    grid = np.asarray(Image.open(run / "eval" / "retrieval-digits.png"))
    assert grid.shape == (25 * 36, 11 * 36, 3)  # 25 queries x (query + top-10), 32 px images framed by 2 px
    assert tuple(grid[0, 0]) == (220, 0, 0) and tuple(grid[0, 36]) == (255, 255, 255)  # only queries are framed
    t = evaluate_tsne(run, iterations=250, max_points=150, device="cpu", log=lambda *a: None)
    assert t["points"] == 150 and Image.open(t["picture"]).size == (800, 800)
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert {"eval/retrieval_digits", "eval/tsne_digits"} <= set(acc.Tags()["images"])
    assert "eval/retrieval_top10_digits" in acc.Tags()["scalars"]
    assert r["top10"]["accuracy"] == saved["top10"]["accuracy"]


def test_finetune_changes_the_backbone_and_linear_does_not(tmp_path, digits_root):
    import hashlib

    from rrdist.eval.finetune import FinetuneSettings, evaluate_finetune
    from rrdist.eval.linear import LinearSettings, evaluate_linear

    run = random_run(tmp_path, digits_root)
    digest = hashlib.sha256((run / "backbone.pt").read_bytes()).hexdigest()
    linear = evaluate_linear(run, settings=LinearSettings(epochs=2), device="cpu", log=lambda *a: None)
    assert hashlib.sha256((run / "backbone.pt").read_bytes()).hexdigest() == digest
    tuned = evaluate_finetune(run, settings=FinetuneSettings(epochs=1), device="cpu", log=lambda *a: None)
    assert tuned["backbone_change_l2"] > 0
    saved = torch.load(run / "eval" / "finetune-digits-backbone.pt", weights_only=True)["backbone"]
    original = torch.load(run / "backbone.pt", weights_only=True)["backbone"]
    assert any(not torch.equal(saved[k], original[k]) for k in original if original[k].is_floating_point())
    assert hashlib.sha256((run / "backbone.pt").read_bytes()).hexdigest() == digest  # the run's own is kept
    assert 0.0 < tuned["test_accuracy"] <= 1.0 and 0.0 < linear["test_accuracy"] <= 1.0


def test_finetune_augmentations():
    from rrdist.eval.finetune import affine_matrices, augment, cutout_mask

    g = torch.Generator().manual_seed(0)
    theta = affine_matrices(2000, g)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    moved = ~(theta == identity).all(dim=(1, 2))
    assert abs(float(moved.float().mean()) - 0.5) < 0.05  # p = 0.5
    lin = theta[moved][:, :, :2]
    det = torch.linalg.det(lin)  # the inverse of a scale in [0.9, 1.1] (shear keeps the area)
    assert float(det.min()) > 1 / 1.1 ** 2 - 1e-4 and float(det.max()) < 1 / 0.9 ** 2 + 1e-4
    masks = cutout_mask(1000, 40, 40, g)
    cut = masks.sum(dim=(1, 2, 3)) < 1600
    assert abs(float(cut.float().mean()) - 0.5) < 0.06
    assert float((1600 - masks.sum(dim=(1, 2, 3)))[cut].max()) == 32 * 32  # a whole square fits sometimes
    x = torch.randn(4, 3, 32, 32)
    assert augment(x, g).shape == x.shape
