"""rrdist: distributed self-supervised relational reasoning on Ray Train, Ray Tune and FFCV.

The command's operations as functions (`rrdist/api.py`), imported when first used so that
`import rrdist` stays quick:

    import rrdist
    rrdist.prepare_data("digits", root="data")
    run = rrdist.pretrain(dataset="digits", root="data", epochs=2, out="runs/try")
    rrdist.evaluate(run.run_dir, "linear")["test_accuracy"]
    net = rrdist.load_backbone(run.run_dir)          # a torch.nn.Module in eval mode
    features = net(net.transform(images))            # images: uint8 [N, H, W, 3]

Every user mistake raises `rrdist.RrdistError` with the line the command prints.
"""

__version__ = "0.1.0"

_API = ("prepare_data", "pretrain", "evaluate", "sweep", "report", "images", "load_backbone", "export",
        "SweepReport")
__all__ = [*_API, "PretrainConfig", "PretrainResult", "RrdistError", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from rrdist import api

        return getattr(api, name)
    if name == "PretrainConfig":
        from rrdist.config import PretrainConfig

        return PretrainConfig
    if name == "PretrainResult":
        from rrdist.train.trainer import PretrainResult

        return PretrainResult
    if name == "RrdistError":
        from rrdist.errors import RrdistError

        return RrdistError
    raise AttributeError(f"module 'rrdist' has no attribute '{name}'")
