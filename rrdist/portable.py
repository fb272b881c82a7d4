"""A trained backbone outside rrdist's runs: loaded as a plain module with the transform its inputs
need, and exported as files that load with torch alone.

The input transform travels with the weights (backbone.pt's "input": size, mean, std), as
torchvision's `weights.transforms()` travels with its weights; a backbone.pt written before it did
takes them from its run's prepared data (manifest.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rrdist.errors import DataError

EXPORT_FORMAT = "rrdist-backbone/1"
TORCHVISION = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50"}  # backbones that are torchvision's model of that name, fc removed


class InputTransform:
    """Images -> the backbone's inputs, as the evaluations make them: scaled to [0, 1], resized
    (bilinear, antialiased) to size x size if they are not, normalised by mean and std. Takes uint8
    [N, H, W, 3] (what rrdist's loaders and `rrdist.images` give) or [N, 3, H, W], or floats in [0, 1]
    [N, 3, H, W]; one image without the batch axis too."""

    def __init__(self, size: int, mean, std) -> None:
        from rrdist.data.augment import KViewAugment

        self.size, self.mean, self.std = int(size), tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.evaluation = KViewAugment(self.size, self.mean, self.std)

    def __repr__(self) -> str:
        return f"InputTransform(size={self.size}, mean={self.mean}, std={self.std})"

    def __call__(self, images) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or 3 not in (x.shape[1], x.shape[-1]):
            raise ValueError(f"expected images [N, H, W, 3] or [N, 3, H, W], got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return self.evaluation.inputs(x)  # the evaluations' own resize and normalisation

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}


def backbone_path(source: str | Path) -> Path:
    """The local backbone.pt of a run folder, a lone backbone file, or (fetched) a run at a URI."""
    from rrdist.models.backbone_file import BACKBONE_FILE
    from rrdist.storage import RunFolder, is_uri

    if is_uri(str(source)):
        folder = RunFolder(str(source))
        folder.pull(BACKBONE_FILE)
        return Path(folder.local) / BACKBONE_FILE
    path = Path(source).expanduser()
    if path.is_dir():
        return path / BACKBONE_FILE
    if not path.exists():
        raise DataError(f"{path} does not exist: pass a run folder (the --out of `rrdist pretrain`) or its backbone.pt")
    return path


def load(source: str | Path, device: str | torch.device | None = "cpu") -> torch.nn.Module:
    """The backbone of `source` in eval mode on `device`, with .transform, .settings and .epochs."""
    from rrdist.models import build_backbone
    from rrdist.models.backbone_file import load_backbone_file

    path = backbone_path(source)
    saved = load_backbone_file(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("backbone"), dict) or \
            not isinstance(saved.get("config"), dict) or "backbone" not in saved["config"]:
        raise DataError(f"{path} is not a backbone file of rrdist (no weights or settings): pass a run's backbone.pt")
    settings = saved["config"]
    net = build_backbone(settings["backbone"])
    try:
        net.load_state_dict(saved["backbone"])
    except RuntimeError:
        raise DataError(f"{path} holds weights that are not a {settings['backbone']}, the backbone its settings name: "
                        f"run the pretraining again") from None
    net.transform = InputTransform(**(saved.get("input") or _inputs_from_data(settings, path)))
    net.settings, net.epochs = settings, int(saved.get("epoch", 0))
    return net.to(device or "cpu").eval()


def _inputs_from_data(settings: dict[str, Any], path: Path) -> dict[str, Any]:
    """Size and normalisation of a backbone.pt saved without them: its run's prepared data says."""
    from rrdist.data.beton import read_manifest

    manifest = read_manifest(settings.get("dataset", ""), settings.get("root", "data"))
    if manifest is None:
        raise DataError(f"{path} does not record its inputs' size and normalisation, and its data "
                        f"({settings.get('dataset')} in {settings.get('root')}) is not prepared there: run "
                        f"`rrdist data prepare {settings.get('dataset')} --root {settings.get('root')}` first")
    return {"size": manifest["image_size"], "mean": manifest["mean"], "std": manifest["std"]}


def evaluations(run_dir: Path) -> dict[str, Any]:
    """The run's evaluation results (eval/*.json), by file name; unreadable ones are left out."""
    out = {}
    for path in sorted((run_dir / "eval").glob("*.json")) if run_dir.is_dir() else []:
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def export(run: str | Path, to: str | Path) -> Path:
    """FILE: {format, backbone, torchvision, state_dict, input, settings, epochs, evaluations}, every value
    a tensor or plain data (`torch.load(FILE, weights_only=True)`); FILE's stem + .torchscript.pt: the
    network as a TorchScript program (`torch.jit.load`, no rrdist or torchvision needed); FILE's stem +
    .md: its model card. Nothing is written if any of the three exists already."""
    from rrdist import atomic
    from rrdist.storage import check_folder, is_uri

    if is_uri(str(to)):
        raise DataError(f"--to {to}: export writes local files; copy them to the bucket afterwards")
    target = Path(to).expanduser().resolve()
    script, card = target.with_suffix(".torchscript.pt"), target.with_suffix(".md")
    for path in (target, script, card):
        if path.exists():
            raise DataError(f"{path} exists already: choose another --to, or remove it first")
    check_folder(target.parent, "--to")
    net = load(run, "cpu")
    run_dir = backbone_path(run).parent
    spec = net.transform.to_dict()
    settings = json.loads(json.dumps(net.settings))  # plain data only: loadable with weights_only=True
    results = evaluations(run_dir)
    name = settings["backbone"]
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.torch_save({"format": EXPORT_FORMAT, "backbone": name, "torchvision": TORCHVISION.get(name),
                       "state_dict": net.state_dict(), "input": spec, "settings": settings, "epochs": net.epochs,
                       "evaluations": results}, target)
    example = torch.zeros(2, 3, spec["size"], spec["size"])
    with torch.no_grad():
        program = torch.jit.trace(net, example)
    with atomic.atomic_path(script) as tmp:
        torch.jit.save(program, str(tmp), _extra_files={"input.json": json.dumps(spec)})
    atomic.write_text(card, model_card(target, script, name, settings, net.epochs, spec, results))
    return target


def model_card(target: Path, script: Path, name: str, settings: dict[str, Any], epochs: int,
               spec: dict[str, Any], results: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(settings.items()))
    scores = "\n".join(
        f"| {r.get('evaluation', key)} | {r.get('init', '')} | {r.get('dataset', '')} | "
        f"{100 * r['test_accuracy']:.2f}% |" for key, r in results.items() if isinstance(r.get("test_accuracy"), float))
    tv = TORCHVISION.get(name)
    plain = (f"net = torchvision.models.{tv}(weights=None)\nnet.fc = torch.nn.Identity()\n"
             f"net.load_state_dict(saved[\"state_dict\"])" if tv else
             f"# {name} is rrdist's own network: its TorchScript program needs no code\n"
             f"net = torch.jit.load(\"{script.name}\")")
    return f"""# {target.name}: {name} pretrained with {settings.get('method')} on {settings.get('dataset')}

- Trained for {epochs} epochs; views per image K = {settings.get('K', '-')}, batch {settings.get('batch_size')}, seed {settings.get('seed')}.
- Inputs: RGB images resized to {spec['size']} x {spec['size']}, scaled to [0, 1], normalised with
  mean {spec['mean']} and std {spec['std']}.
- Output: one feature vector per image (the network without a classifier).

## Evaluations

| evaluation | weights | dataset | test accuracy |
|---|---|---|---|
{scores or '| none recorded | | | |'}

## Loading it without rrdist

```python
import torch
saved = torch.load("{target.name}", weights_only=True)   # state_dict, input, settings, evaluations
{plain}
mean = torch.tensor(saved["input"]["mean"]).view(1, 3, 1, 1)
std = torch.tensor(saved["input"]["std"]).view(1, 3, 1, 1)
features = net.eval()((images_0_to_1 - mean) / std)       # images [N, 3, {spec['size']}, {spec['size']}]
```

`{script.name}` is the same network as a TorchScript program: `torch.jit.load("{script.name}")`.

## Settings of the run

| setting | value |
|---|---|
{rows}
"""
