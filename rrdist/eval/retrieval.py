"""Image retrieval (appendix B.9-B.10): nearest neighbours by Euclidean distance in feature space.

Queries: up to `per_class` test images of each class (seeded); each query retrieves its k
nearest other test images. Reported: top-k retrieval accuracy (the share of retrieved images of
the query's class) for k = 10, 100, 1000, overall and per class, and the confusion matrix of
query class against retrieved class; plus a picture of 25 random queries beside their top-10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from rrdist import atomic
from rrdist.eval.results import at_least, evaluation_device, result_stem

KS = (10, 100, 1000)


def nearest(queries: torch.Tensor, gallery: torch.Tensor, query_rows: torch.Tensor, k: int,
            chunk: int = 1024) -> torch.Tensor:
    """[Q, k] gallery rows nearest to each query (Euclidean), never the query's own row."""
    out = []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start:start + chunk].double(), gallery.double())
        d[torch.arange(d.shape[0]), query_rows[start:start + chunk]] = float("inf")
        out.append(d.topk(min(k, gallery.shape[0] - 1), dim=1, largest=False).indices)
    return torch.cat(out)


def retrieval_scores(features: torch.Tensor, labels: torch.Tensor, query_rows: torch.Tensor,
                     num_classes: int, ks=KS) -> dict[str, Any]:
    top = nearest(features[query_rows], features, query_rows, max(ks))
    qlabels = labels[query_rows]
    result: dict[str, Any] = {}
    for k in ks:
        kk = min(k, top.shape[1])
        retrieved = labels[top[:, :kk]]  # [Q, kk]
        hits = (retrieved == qlabels[:, None]).double()
        per_class = [float(hits[qlabels == c].mean()) if (qlabels == c).any() else float("nan")
                     for c in range(num_classes)]
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        confusion.index_put_((qlabels[:, None].expand_as(retrieved).reshape(-1), retrieved.reshape(-1)),
                             torch.ones(retrieved.numel(), dtype=torch.float64), accumulate=True)
        confusion = confusion / confusion.sum(1, keepdim=True).clamp(min=1)
        result[f"top{k}"] = {"accuracy": float(hits.mean()), "per_class": per_class,
                             "confusion": confusion.tolist(), "k": kk}
    return result


def sample_queries(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().squeeze(1)
        rows.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(rows).sort().values


def retrieval_grid(images: torch.Tensor, rows: int, columns: int, border: int = 2) -> np.ndarray:
    """uint8 [rows * columns, H, W, 3] -> one picture, the first image of each row framed in red."""
    n, h, w, _ = images.shape
    cell_h, cell_w = h + 2 * border, w + 2 * border
    canvas = np.full((rows * cell_h, columns * cell_w, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        y, x = r * cell_h, c * cell_w
        if c == 0:
            canvas[y:y + cell_h, x:x + cell_w] = (220, 0, 0)
        canvas[y + border:y + border + h, x + border:x + border + w] = images[i].numpy()
    return canvas


def evaluate_retrieval(run_dir: str | Path, dataset: str | None = None, root: str | None = None,
                       per_class: int = 500, seed: int = 0, pictures: int = 25, device: str | None = None,
                       log=print) -> dict[str, Any]:
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    from rrdist.eval.features import run_features, split_images

    at_least({"per_class": per_class, "pictures": pictures}, {"per_class": 1, "pictures": 1})
    evaluation_device(device)
    run_dir = Path(run_dir).expanduser().resolve()
    manifest, cfg, feats = run_features(run_dir, ("test",), dataset=dataset, root=root, device=device, log=log)
    features, labels = feats["test"]
    queries = sample_queries(labels, per_class, seed)
    scores = retrieval_scores(features, labels, queries, manifest["num_classes"])
    name = manifest["dataset"]
    # The picture: `pictures` random queries, each beside its top-10.
    g = torch.Generator().manual_seed(seed + 1)
    shown = queries[torch.randperm(len(queries), generator=g)[:pictures]]
    top10 = nearest(features[shown], features, shown, 10)
    order = torch.cat([shown[:, None], top10], dim=1).reshape(-1)
    grid = retrieval_grid(split_images(manifest, "test", order), len(shown), top10.shape[1] + 1)
    settings = {"per_class": per_class, "seed": seed, "distance": "euclidean", "ks": list(KS)}
    stem = result_stem(run_dir, f"retrieval-{name}", settings)
    picture = run_dir / "eval" / f"{stem}.png"
    with atomic.atomic_path(picture) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    result = {"evaluation": "retrieval", "dataset": name, "pretrain_dataset": cfg.dataset,
              "settings": settings,
              "queries": int(len(queries)), "classes": manifest["classes"], **scores, "picture": str(picture)}
    atomic.write_json(run_dir / "eval" / f"{stem}.json", result)
    with SummaryWriter(str(run_dir / "tb")) as writer:
        for k in KS:
            writer.add_scalar(f"eval/retrieval_top{k}_{name}", result[f"top{k}"]["accuracy"], cfg.epochs)
        writer.add_image(f"eval/retrieval_{name}", grid, cfg.epochs, dataformats="HWC")
    return result
