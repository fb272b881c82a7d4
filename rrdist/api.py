"""rrdist from Python: the command's operations as functions that return what a program needs.

Settings have the command's names, defaults and checks; a mistake raises `RrdistError` carrying the
line the command would print (also when it was found inside a Ray worker). Nothing here prints but
the progress lines the command prints too (pass `log=lambda *a: None` to quiet the driver's).
"""

from __future__ import annotations

import csv
import io
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rrdist.errors import ConfigError, RrdistError, find_user_message

EVALUATIONS = ("linear", "retrieval", "finetune", "tsne")


@contextmanager
def user_errors() -> Iterator[None]:
    """A user's mistake, wherever it was found (a Ray worker wraps it), as one RrdistError."""
    try:
        yield
    except RrdistError:
        raise
    except Exception as e:
        message = find_user_message(e)
        if message is None:
            raise
        raise RrdistError(message) from None


def prepare_data(dataset: str, root: str | Path = "data", *, download: bool = False, image_size: int | None = None,
                 force: bool = False, log=print, storage: str | None = None, max_side: int | None = None,
                 quality: int | None = None, classes: str | Path | None = None) -> dict[str, Any]:
    """`rrdist data prepare`: write ROOT/ffcv/DATASET/*.beton unless valid ones exist; the data's manifest
    (splits and their sizes, image size, normalisation, the folder). `storage`, `max_side`, `quality`,
    `classes`: as the command's flags."""
    from rrdist.data.beton import prepare

    with user_errors():
        return prepare(dataset, root, download=download, image_size=image_size, force=force, log=log,
                       storage=storage, max_side=max_side, quality=quality, classes=classes)


def pretrain(config=None, *, address: str | None = None, log=print, **settings):
    """`rrdist pretrain`: one pretraining run on Ray Train (a private local Ray unless `address` names a
    cluster); resumes the run in `out` if it holds this one.

    `config`: a `PretrainConfig`, a dict of settings, or the path of a YAML file of them; keyword
    arguments (the command's flags, with underscores: `epochs=2, K=4, out="runs/x"`) override it.
    Returns a `PretrainResult`: `run_dir`, `metrics` (the last epoch's), `resumed`."""
    from rrdist.config import PretrainConfig, read_settings
    from rrdist.methods import config_from_dict
    from rrdist.train.trainer import pretrain as fit_run

    with user_errors():
        if config is None:
            values, source = {}, "pretrain()'s arguments"
        elif isinstance(config, PretrainConfig):
            values, source = config.to_dict(), "the PretrainConfig"
        elif isinstance(config, dict):
            values, source = dict(config), "the settings dict"
        elif isinstance(config, (str, Path)):
            values, source = read_settings(config), str(config)
        else:
            raise ConfigError(f"config must be a PretrainConfig, a dict or a YAML file's path (got {type(config).__name__})")
        values.update(settings)
        cfg = config_from_dict(values, source=source).validate()
        return fit_run(cfg, address=address, log=log)


def evaluate(run: str | Path, evaluation: str = "linear", **settings) -> dict[str, Any]:
    """`rrdist evaluate EVALUATION --run RUN`: linear, retrieval, finetune or tsne, with that evaluation's
    settings as keyword arguments (`epochs=`, `dataset=`, `root=`, `device=`, `init=` for linear, ...).
    Returns its result as the command saves it in RUN/eval/ (linear: `test_accuracy`, ...)."""
    from rrdist.storage import working_copy

    if evaluation not in EVALUATIONS:
        raise ConfigError(f"unknown evaluation '{evaluation}': choose one of {', '.join(EVALUATIONS)}")
    shared = {k: settings.pop(k) for k in ("dataset", "root", "device", "log") if k in settings}
    with user_errors(), working_copy(run, pull=("backbone.pt",), push=("eval", "tb")) as run_dir:
        if evaluation == "linear":
            from rrdist.eval.linear import LinearSettings, evaluate_linear

            init = settings.pop("init", "trained")
            return evaluate_linear(run_dir, init=init, settings=_settings(LinearSettings, settings), **shared)
        if evaluation == "finetune":
            from rrdist.eval.finetune import FinetuneSettings, evaluate_finetune

            return evaluate_finetune(run_dir, settings=_settings(FinetuneSettings, settings), **shared)
        if evaluation == "retrieval":
            from rrdist.eval.retrieval import evaluate_retrieval

            return evaluate_retrieval(run_dir, **shared, **_arguments(evaluate_retrieval, settings))
        from rrdist.eval.tsne import evaluate_tsne

        return evaluate_tsne(run_dir, **shared, **_arguments(evaluate_tsne, settings))


def _settings(kind, values: dict[str, Any]):
    from dataclasses import fields

    return kind(**_known({f.name for f in fields(kind)}, values))


def _arguments(evaluation, values: dict[str, Any]) -> dict[str, Any]:
    import inspect

    own = set(inspect.signature(evaluation).parameters) - {"run_dir", "dataset", "root", "device", "log"}
    return _known(own, values)


def _known(known: set[str], values: dict[str, Any]) -> dict[str, Any]:
    """`values`, refused in one line if one is not among `known` (an evaluation's settings)."""
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"'{unknown[0]}' is not a setting of this evaluation: use one of {', '.join(sorted(known))}")
    return values


def sweep(space: str | Path, *, root: str | Path = "data", out: str | Path = "runs/sweeps", address: str | None = None,
          resume: bool = False, data_uri: str | None = None, log=print) -> Path | str:
    """`rrdist sweep SPACE`: every trial of a search space on Ray Tune; returns the sweep's folder, which
    holds results.md and results.csv (`report` reads them)."""
    from rrdist.tune.driver import run_sweep

    with user_errors():
        return run_sweep(space, root=str(root), out=out, address=address, resume=resume, data_uri=data_uri, log=log)


@dataclass
class SweepReport:
    folder: str  # the sweep's folder (a path or a URI)
    markdown: str  # results.md: the tables the command prints
    rows: list[dict[str, str]]  # results.csv: one row per point of the space (mean and std over seeds)


def report(sweep_dir: str | Path) -> SweepReport:
    """`rrdist report SWEEP`: the results table of a sweep, written anew from what is on disk."""
    from rrdist.storage import RunFolder
    from rrdist.tune.report import write_report

    with user_errors():
        markdown = write_report(sweep_dir)
        table = RunFolder(sweep_dir).read_text("results.csv") or ""
    return SweepReport(str(sweep_dir), markdown, list(csv.DictReader(io.StringIO(table))))


def images(dataset: str, split: str = "test", *, root: str | Path = "data", count: int | None = None):
    """The images of a prepared split, in file order, as the evaluations read them: (uint8 [N, H, W, 3],
    int64 labels [N]); `count`: the first `count` only."""
    import torch

    from rrdist.data.beton import ensure_prepared, split_path
    from rrdist.data.loader import decoding, image_loader

    with user_errors():
        manifest = ensure_prepared(dataset, root, log=lambda *a: None)
        if split not in manifest["splits"]:
            raise ConfigError(f"{dataset} has no '{split}' split: choose one of {', '.join(manifest['splits'])}")
        if count is not None and count < 1:
            raise ConfigError(f"count must be at least 1 (got {count})")
        picked, labels, have = [], [], 0
        for batch, y in image_loader(split_path(manifest, split), 512, train=False, drop_last=False,
                                     **decoding(manifest)):
            picked.append(batch.clone())
            labels.append(y)
            have += len(y)
            if count is not None and have >= count:
                break
    return torch.cat(picked)[:count], torch.cat(labels)[:count]


def load_backbone(source: str | Path, device: str | None = "cpu"):
    """A trained backbone as a plain `torch.nn.Module` in eval mode, from a run folder, a bucket URI of one,
    or a `backbone.pt` copied anywhere; no Ray starts. Attached: `.transform` (uint8 images [N, H, W, 3]
    or [N, 3, H, W], or floats in [0, 1] -> the network's normalised inputs), `.settings` (the run's)
    and `.epochs` (trained)."""
    from rrdist.portable import load

    with user_errors():
        return load(source, device)


def export(run: str | Path, to: str | Path) -> Path:
    """`rrdist export --run RUN --to FILE`: the backbone as a file that loads with torch alone, a TorchScript
    program beside it, and a model card (FILE with .md); returns FILE."""
    from rrdist.portable import export as write_export

    with user_errors():
        return write_export(run, to)
