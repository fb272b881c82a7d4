"""The sweep's pictures: accuracy against K, one line per gamma with the seeds' spread (the paper's
Figure 2b), and accuracy against gamma, one line per K; PNG files in `figures/` and images in
TensorBoard (the same folder), beside the tables."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rrdist.storage import RunFolder

PLOTTED = ("K", "gamma")  # axes drawn along x, each with one line per value of the other


def draw(rows: list[dict[str, Any]], x: str, series: str | None, evaluation: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get(evaluation) is not None:
            groups.setdefault(row[series] if series else None, []).append(row)
    for value, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        members.sort(key=lambda r: r[x])
        xs = np.array([r[x] for r in members], dtype=float)
        mean = np.array([r[evaluation][0] for r in members])
        std = np.array([r[evaluation][1] for r in members])
        line, = ax.plot(xs, mean, marker="o", label=f"{series} = {value}" if series else None)
        ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if x == "K":
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r[x] for r in rows}), labels=[str(k) for k in sorted({r[x] for r in rows})])
    ax.set_xlabel(x)
    ax.set_ylabel(f"{evaluation} accuracy (%), mean ± std over seeds")
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_figures(folder: RunFolder, axes: list[str], evaluations: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """Draw every plotted axis the sweep varies, for its first evaluation; returns the PNG names."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    varied = [a for a in PLOTTED if a in axes and len({r[a] for r in rows}) > 1]
    if not varied or not evaluations or not any(r.get(evaluations[0]) for r in rows):
        return []
    evaluation = evaluations[0]
    folder.local.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".figures-", dir=folder.local))
    names = []
    with SummaryWriter(str(tmp)) as writer:
        for x in varied:
            series = next((a for a in PLOTTED if a != x and a in axes), None)
            name = f"{evaluation}-vs-{x}.png"
            draw(rows, x, series, evaluation, tmp / name)
            writer.add_image(f"sweep/{evaluation}_vs_{x}", np.asarray(Image.open(tmp / name).convert("RGB")),
                             0, dataformats="HWC")
            names.append(name)
    target = folder.local / "figures"
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    folder.replace_folder("figures")
    return names
