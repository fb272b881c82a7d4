"""t-SNE of the test features (appendix B.11): scikit-learn, perplexity 30, learning rate 200,
1000 iterations, random init, Euclidean metric; a PNG coloured by class and a TensorBoard image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rrdist import atomic
from rrdist.eval.results import at_least, evaluation_device, result_stem

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def embed(features: np.ndarray, seed: int = 0, iterations: int = 1000) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=min(30.0, (len(features) - 1) / 3), learning_rate=200.0,
                max_iter=iterations, init="random", metric="euclidean", random_state=seed).fit_transform(features)


def scatter(points: np.ndarray, labels: np.ndarray, size: int = 800, dot: int = 2) -> np.ndarray:
    """A plain scatter plot, [size, size, 3] uint8, one colour per class (cycling past ten)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    lo, hi = points.min(0), points.max(0)
    xy = (points - lo) / np.maximum(hi - lo, 1e-9) * (size - 4 * dot) + 2 * dot
    for (x, y), c in zip(xy, labels):
        draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=PALETTE[int(c) % len(PALETTE)])
    return np.asarray(img)


def evaluate_tsne(run_dir: str | Path, dataset: str | None = None, root: str | None = None, seed: int = 0,
                  iterations: int = 1000, max_points: int | None = None, device: str | None = None,
                  log=print) -> dict[str, Any]:
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    from rrdist.eval.features import run_features

    at_least({"max_points": max_points, "iterations": iterations}, {"max_points": 2, "iterations": 250})
    evaluation_device(device)
    run_dir = Path(run_dir).expanduser().resolve()
    manifest, cfg, feats = run_features(run_dir, ("test",), dataset=dataset, root=root, device=device, log=log)
    features, labels = (t.numpy() for t in feats["test"])
    if max_points is not None and len(labels) > max_points:
        keep = np.random.default_rng(seed).choice(len(labels), max_points, replace=False)
        features, labels = features[keep], labels[keep]
    points = embed(features.astype(np.float64), seed, iterations)
    picture = scatter(points, labels)
    name = manifest["dataset"]
    settings = {"perplexity": 30, "learning_rate": 200, "iterations": iterations, "init": "random",
                "metric": "euclidean", "seed": seed}
    stem = result_stem(run_dir, f"tsne-{name}", {**settings, "max_points": max_points})
    path = run_dir / "eval" / f"{stem}.png"
    with atomic.atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    result = {"evaluation": "tsne", "dataset": name, "pretrain_dataset": cfg.dataset, "points": int(len(labels)),
              "settings": {**settings, "max_points": max_points}, "picture": str(path)}
    atomic.write_json(run_dir / "eval" / f"{stem}.json", result)
    with SummaryWriter(str(run_dir / "tb")) as writer:
        writer.add_image(f"eval/tsne_{name}", picture, cfg.epochs, dataformats="HWC")
    return result
