"""The demo: relational reasoning on the embedded digits data, end to end, in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(out: Path, epochs: int = 30, workers: int = 2) -> dict[str, float]:
    from rrdist.errors import ConfigError
    from rrdist.eval.linear import evaluate_linear
    from rrdist.methods import make_config
    from rrdist.storage import check_folder
    from rrdist.train.trainer import pretrain

    if not 1 <= workers <= 64:
        raise ConfigError(f"the demo trains on batches of 64 images, for 1 to 64 workers "
                          f"(got --workers {workers}): pass --workers 2")
    check_folder(out, "--out")
    start = time.perf_counter()
    out = out.expanduser().resolve()
    cfg = make_config(dataset="digits", root=str(out / "data"), backbone="conv4", K=4, gamma=2.0,
                      batch_size=64, epochs=epochs, workers=workers, checkpoint_every=10,
                      out=str(out / "relational-conv4-k4"))
    pretrain(cfg)
    trained = evaluate_linear(cfg.out, init="trained")
    random = evaluate_linear(cfg.out, init="random")
    minutes = (time.perf_counter() - start) / 60
    rows = [("random weights (lower bound)", random["test_accuracy"]),
            (f"relational reasoning, K=4, {epochs} epochs", trained["test_accuracy"])]
    print()
    print(f"Linear evaluation on digits (conv4, {workers} Ray Train workers, {minutes:.1f} min)")
    print(f"| {'backbone':40s} | test accuracy |")
    print(f"|{'-' * 42}|---------------|")
    for name, acc in rows:
        print(f"| {name:40s} | {100 * acc:12.2f}% |")
    print()
    print(f"Run folder: {cfg.out}")
    print(f"Watch it:   tensorboard --logdir {out}")
    return {name: acc for name, acc in rows}
