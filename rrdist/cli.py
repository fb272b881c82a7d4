"""The `rrdist` command: data, pretrain, evaluate, sweep, report, submit, jobs, demo."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rrdist.errors import RrdistError, find_user_message


def _data(args: argparse.Namespace) -> int:
    from rrdist.data.datasets import DATASETS

    if args.data_command == "list":
        for name, spec in sorted(DATASETS.items()):
            print(f"{name:12s} {spec.summary}")
        return 0
    from rrdist.data.beton import prepare

    manifest = prepare(args.dataset, args.root, download=args.download, image_size=args.image_size,
                       force=args.force)
    splits = ", ".join(f"{k} {v['n']}" for k, v in manifest["splits"].items())
    print(f"{args.dataset}: {splits} images of {manifest['image_size']}x{manifest['image_size']} "
          f"in {manifest['dir']}")
    return 0


PRETRAIN_FLAGS = {  # config field -> (type, help); the flag is --field-with-dashes (--K for K)
    "method": (str, "self-supervised method"),
    "dataset": (str, "dataset name (rrdist data list)"),
    "root": (str, "data folder; .beton files live in ROOT/ffcv/"),
    "data_uri": (str, "shared copy of ROOT (file://, s3://, gs://): each node stages it into ROOT once"),
    "backbone": (str, "conv4, resnet8, resnet32, resnet56 or resnet34"),
    "K": (int, "augmented views per image"),
    "gamma": (float, "focal factor of the loss; 0 is plain BCE"),
    "aggregation": (str, "cat, sum, mean or max"),
    "head": (str, "relation, or the Table 14 ablations dot (dot product of the features) and encoder_dot"),
    "label_fraction": (float, "semi-supervised variant: share of training images whose label adds same-class positives"),
    "batch_size": (int, "images per optimizer step over all workers (the paper's M); each worker holds M / workers"),
    "lr": (float, "Adam learning rate"),
    "epochs": (int, "total epochs (may grow when resuming)"),
    "seed": (int, "seed of weights, data order and views"),
    "workers": (int, "Ray Train workers (data parallel)"),
    "cpus_per_worker": (int, "CPUs reserved per worker (and torch threads)"),
    "loader_workers": (int, "FFCV decoding threads per worker"),
    "checkpoint_every": (int, "epochs between checkpoints (the last epoch always gets one)"),
    "max_failures": (int, "restarts of the worker group from the last checkpoint after a failure"),
    "precision": (str, "fp32; bf16 autocast of the forward pass; fp64 for numerical checks (slow)"),
    "out": (str, "run folder: a path (local or shared filesystem) or a bucket URI (s3://, gs://, ...)"),
}


def _pretrain(args: argparse.Namespace) -> int:
    from rrdist.config import PretrainConfig
    from rrdist.storage import is_uri, shown
    from rrdist.train.trainer import pretrain

    cfg = PretrainConfig.from_yaml(args.config) if args.config else PretrainConfig()
    values = cfg.to_dict()
    for name in PRETRAIN_FLAGS:
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if args.use_gpu:
        values["use_gpu"] = True
    if args.sync_bn is not None:
        values["sync_bn"] = args.sync_bn
    if args.compile:
        values["compile"] = True
    if args.online_probe:
        values["online_probe"] = True
    cfg = PretrainConfig.from_dict(values).validate()
    result = pretrain(cfg, address=args.address)
    m = result.metrics
    out, folder = shown(cfg.out), shown(cfg.out, query=False)
    backbone = f"{folder}/backbone.pt" if is_uri(cfg.out) else result.run_dir / "backbone.pt"
    logdir = f"{folder}/tb" if is_uri(cfg.out) else Path(cfg.out).parent
    print(f"done: {m.get('epoch', cfg.epochs)} epochs, loss {m.get('loss', float('nan')):.4f}, "
          f"pair accuracy {m.get('pair_acc', float('nan')):.3f}; backbone in {backbone}")
    print(f"next: rrdist evaluate linear --run {shlex.quote(out)}    tensorboard --logdir {logdir}")
    return 0


def _run_copy(run: str):
    """The run folder to evaluate in: the path itself, or a working copy of a run at a URI whose new
    results (eval/, tb/) go back to the URI."""
    from rrdist.storage import working_copy

    return working_copy(run, pull=("backbone.pt",), push=("eval", "tb"))


def _evaluate(args: argparse.Namespace) -> int:
    from rrdist.eval.linear import LinearSettings, evaluate_linear

    settings = LinearSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    with _run_copy(args.run) as run_dir:
        result = evaluate_linear(run_dir, init=args.init, dataset=args.dataset, root=args.root,
                                 settings=settings, device=args.device)
    print(f"linear evaluation ({args.init} weights) on {result['dataset']}: "
          f"test accuracy {100 * result['test_accuracy']:.2f}%")
    return 0


def _retrieval(args: argparse.Namespace) -> int:
    from rrdist.eval.retrieval import KS, evaluate_retrieval

    with _run_copy(args.run) as run_dir:
        r = evaluate_retrieval(run_dir, dataset=args.dataset, root=args.root, per_class=args.per_class,
                               seed=args.seed, device=args.device)
    scores = ", ".join(f"top-{k} {100 * r[f'top{k}']['accuracy']:.2f}%" for k in KS)
    print(f"retrieval on {r['dataset']} ({r['queries']} queries): {scores}; picture {r['picture']}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from rrdist.eval.finetune import FinetuneSettings, evaluate_finetune

    with _run_copy(args.run) as run_dir:
        r = evaluate_finetune(run_dir, dataset=args.dataset, root=args.root, device=args.device,
                              settings=FinetuneSettings(epochs=args.epochs, batch_size=args.batch_size,
                                                        seed=args.seed))
    print(f"finetuning on {r['dataset']}: test accuracy {100 * r['test_accuracy']:.2f}%")
    return 0


def _tsne(args: argparse.Namespace) -> int:
    from rrdist.eval.tsne import evaluate_tsne

    with _run_copy(args.run) as run_dir:
        r = evaluate_tsne(run_dir, dataset=args.dataset, root=args.root, seed=args.seed,
                          max_points=args.max_points, device=args.device)
    print(f"t-SNE of {r['points']} {r['dataset']} test images: {r['picture']}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from rrdist.tune.driver import run_sweep

    run_sweep(args.space, root=args.root, out=args.out, address=args.address, resume=args.resume,
              data_uri=args.data_uri)
    return 0


def _report(args: argparse.Namespace) -> int:
    from rrdist.tune.report import write_report

    print(write_report(args.sweep), end="")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from rrdist.jobs import submit

    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    return submit(rest, address=args.address, follow=args.follow)


def _jobs(args: argparse.Namespace) -> int:
    from rrdist.jobs import jobs_command

    return jobs_command(args.action, args.job_id, args.address, follow=args.follow)


def _demo(args: argparse.Namespace) -> int:
    from rrdist.demo import run_demo

    run_demo(Path(args.out), epochs=args.epochs, workers=args.workers)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rrdist.config import PretrainConfig

    parser = argparse.ArgumentParser(prog="rrdist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare datasets as FFCV .beton files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="list the datasets")
    prep = data_sub.add_parser("prepare", help="write <root>/ffcv/<dataset>/{train,test}.beton")
    prep.add_argument("dataset")
    prep.add_argument("--root", default="data", help="folder with the dataset's files; .beton files go to ROOT/ffcv/")
    prep.add_argument("--download", action="store_true", help="download the dataset first (needs a network)")
    prep.add_argument("--image-size", type=int, default=None, help="resize images to N x N")
    prep.add_argument("--force", action="store_true", help="write again even if valid files exist")
    data.set_defaults(func=_data)

    pre = sub.add_parser("pretrain", help="self-supervised pretraining on Ray Train")
    pre.add_argument("--config", help="YAML file of settings; flags override it")
    defaults = PretrainConfig().to_dict()
    for name, (kind, text) in PRETRAIN_FLAGS.items():
        flag = "--K" if name == "K" else "--" + name.replace("_", "-")
        pre.add_argument(flag, dest=name, type=kind, default=None, metavar=name.upper(),
                         help=f"{text} (default: {defaults[name]})")
    pre.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL")
    pre.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                     help="BatchNorm statistics over the global batch, all workers together, as one process "
                          "would compute them (default: on); --no-sync-bn: each worker's own, fewer "
                          "collectives (1.6x the views/s on 2 CPU workers) but no longer the one-process experiment")
    pre.add_argument("--compile", action="store_true", help="torch.compile the backbone (measured: bench/RESULTS.md)")
    pre.add_argument("--online-probe", action="store_true",
                     help="train a linear classifier on detached features alongside; logs probe_acc per epoch")
    pre.add_argument("--address", default=None, help="Ray cluster to join (default: a private local Ray)")
    pre.set_defaults(func=_pretrain)

    ev = sub.add_parser("evaluate", help="evaluate a run's backbone")
    ev_sub = ev.add_subparsers(dest="evaluation", required=True)
    def evaluation(name: str, text: str, func, dataset_help: str = "another dataset (default: the run's)"):
        """A sub-command of `evaluate` with the options every evaluation takes."""
        p = ev_sub.add_parser(name, help=text)
        p.add_argument("--run", required=True, help="the run folder or URI (pretrain --out)")
        p.add_argument("--dataset", default=None, help=dataset_help)
        p.add_argument("--root", default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
        p.set_defaults(func=func)
        return p

    lin = evaluation("linear", "linear evaluation on frozen, cached features", _evaluate,
                     "evaluate on another dataset (default: the run's)")
    lin.add_argument("--init", default="trained", choices=["trained", "random"])
    lin.add_argument("--epochs", type=int, default=100)
    lin.add_argument("--batch-size", type=int, default=128)
    lin.add_argument("--lr", type=float, default=1e-3)
    ret = evaluation("retrieval", "top-10/100/1000 retrieval accuracy, confusion matrix, query grid", _retrieval,
                     "retrieve in another dataset (default: the run's)")
    ret.add_argument("--per-class", type=int, default=500, help="queries per class (appendix B.10)")
    ft = evaluation("finetune", "backbone + linear classifier trained together (appendix A.6)", _finetune)
    ft.add_argument("--epochs", type=int, default=100)
    ft.add_argument("--batch-size", type=int, default=32)
    ts = evaluation("tsne", "t-SNE picture of the test features (appendix B.11)", _tsne)
    ts.add_argument("--max-points", type=int, default=None, help="a random subset of the test images")

    sw = sub.add_parser("sweep", help="a Ray Tune sweep over a search space (tune_spaces/*.yaml)")
    sw.add_argument("space", help="the search-space YAML file")
    sw.add_argument("--root", default="data", help="data folder for every trial")
    sw.add_argument("--out", default="runs/sweeps", help="sweeps go to OUT/<name>/ (a path or a bucket URI)")
    sw.add_argument("--data-uri", default=None,
                    help="prepared data at a URI (ROOT/ffcv/<dataset> there) that each node copies to --root")
    sw.add_argument("--address", default=None, help="Ray cluster to join (default: a private local Ray)")
    sw.add_argument("--resume", action="store_true",
                    help="continue an interrupted sweep (running the same command again does it too)")
    sw.set_defaults(func=_sweep)

    rep = sub.add_parser("report", help="the results table of a sweep, from what is on disk")
    rep.add_argument("sweep", help="the sweep folder or URI, e.g. runs/sweeps/demo")
    rep.set_defaults(func=_report)

    sm = sub.add_parser("submit", help="run an rrdist command on a Ray cluster (Job Submission API)")
    sm.add_argument("--address", default=None, help="the head's job API (default: $RAY_API_SERVER_ADDRESS "
                    "or http://127.0.0.1:8265)")
    sm.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's status")
    sm.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the rrdist arguments, e.g. -- pretrain ...")
    sm.set_defaults(func=_submit)

    jb = sub.add_parser("jobs", help="list jobs, show their logs or status, stop them")
    jb.add_argument("action", choices=["list", "status", "logs", "stop"])
    jb.add_argument("job_id", nargs="?")
    jb.add_argument("--address", default=None)
    jb.add_argument("--follow", action="store_true", help="with logs: stream until the job ends")
    jb.set_defaults(func=_jobs)

    demo = sub.add_parser("demo", help="pretrain on the embedded digits data, evaluate, print a table")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--workers", type=int, default=2)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RrdistError as e:
        print(f"rrdist: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rrdist: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a user error wrapped by Ray still gets its one line
        message = find_user_message(e)
        if message is None:
            raise
        print(f"rrdist: error: {message}", file=sys.stderr)
        return 2
