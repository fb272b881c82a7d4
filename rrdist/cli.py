"""The `rrdist` command: data, pretrain, evaluate, export, sweep, report, submit, jobs, demo."""

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
                       force=args.force, storage=args.storage, max_side=args.max_side, quality=args.quality,
                       classes=args.classes)
    splits = ", ".join(f"{k} {v['n']}" for k, v in manifest["splits"].items())
    print(f"{args.dataset}: {splits} images of {manifest['image_size']}x{manifest['image_size']} "
          f"in {manifest['dir']}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from rrdist.config import COMMAND_LINE, read_settings
    from rrdist.methods import all_keys, config_from_dict
    from rrdist.storage import is_uri, shown
    from rrdist.train.trainer import pretrain

    values = read_settings(args.config) if args.config else {}
    values.update({name: getattr(args, name) for name in all_keys() if getattr(args, name) is not None})
    cfg = config_from_dict(values, source=args.config or COMMAND_LINE).validate()
    result = pretrain(cfg, address=args.address)
    m = result.metrics
    out, folder = shown(cfg.out), shown(cfg.out, query=False)
    backbone = f"{folder}/backbone.pt" if is_uri(cfg.out) else result.run_dir / "backbone.pt"
    logdir = f"{folder}/tb" if is_uri(cfg.out) else Path(cfg.out).parent
    figures = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in m.items()
                        if k not in ("epoch", "steps", "views_per_s", "epoch_time_s", "checkpoint_s")
                        and isinstance(v, float))
    print(f"done: {m.get('epoch', cfg.epochs)} epochs{', ' + figures if figures else ''}; backbone in {backbone}")
    print(f"next: rrdist evaluate linear --run {shlex.quote(out)}    tensorboard --logdir {logdir}")
    return 0


def _add_pretrain_flags(pre: argparse.ArgumentParser) -> None:
    """Flags from the settings' declarations: type, default and help come from the dataclass fields."""
    from rrdist.config import PretrainConfig, help_of
    from rrdist.data.datasets import DATASETS
    from rrdist.methods import METHODS, default_method
    from rrdist.models import BACKBONES

    choices = {"method": ", ".join(METHODS), "dataset": ", ".join(sorted(DATASETS)), "backbone": ", ".join(BACKBONES)}
    shared = pre.add_argument_group("settings of every run")
    for f in PretrainConfig.shared_fields():
        extra = f"; one of {choices[f.name]}" if f.name in choices else ""
        default = f.default if f.name != "method" else default_method()
        _add_flag(shared, f, f"{help_of(f)}{extra} (default: {default})")
    _add_method_flags(pre)
    _add_monitor_flags(pre)


def _add_method_flags(pre: argparse.ArgumentParser) -> None:
    """One group per method (and one for settings several share), each flag's default per method."""
    from dataclasses import fields

    from rrdist.config import help_of
    from rrdist.methods import METHODS, setting_owners

    owners = setting_owners()
    declared = {}  # a setting's first declaration gives its help
    for method in METHODS.values():
        for f in fields(method.Settings):
            declared.setdefault(f.name, f)
    groups = {"several methods": [n for n in owners if len(owners[n]) > 1]}
    groups.update({name: [n for n in owners if owners[n] == [name]] for name in METHODS})
    for title, names in groups.items():
        if not names:
            continue
        group = pre.add_argument_group(f"settings of {title}")
        for name in names:
            defaults = {m: next(g.default for g in fields(METHODS[m].Settings) if g.name == name) for m in owners[name]}
            shown = (", ".join(f"{m} {d}" for m, d in defaults.items()) if len(set(defaults.values())) > 1
                     else str(next(iter(defaults.values()))))
            used = f"; used by {', '.join(owners[name])}" if len(owners[name]) > 1 else ""
            _add_flag(group, declared[name], f"{help_of(declared[name])}{used} (default: {shown})")


def _add_monitor_flags(pre: argparse.ArgumentParser) -> None:
    """One group per monitor (rrdist.monitors): they watch the run and never change what it learns."""
    from dataclasses import fields

    from rrdist.config import help_of
    from rrdist.monitors import MONITORS

    for name, monitor in MONITORS.items():
        group = pre.add_argument_group(f"the {name} monitor (reports {', '.join(monitor.figures)})")
        for f in fields(monitor.Settings):
            _add_flag(group, f, f"{help_of(f)} (default: {f.default})")


def _add_flag(group, f, text: str) -> None:
    from rrdist.config import TYPES, type_name

    flag = "--K" if f.name == "K" else "--" + f.name.replace("_", "-")
    if type_name(f) == "bool":
        action = argparse.BooleanOptionalAction if f.default else "store_const"
        extra = {} if f.default else {"const": True}
        group.add_argument(flag, dest=f.name, action=action, default=None, help=text, **extra)
        return
    kind = str if f.name == "workers" else TYPES[type_name(f)]  # a count, or MIN-MAX (rrdist.config.worker_range)
    group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(), help=text)


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


def _export(args: argparse.Namespace) -> int:
    from rrdist.portable import export

    path = export(args.run, args.to)
    print(f"exported {path}, {path.with_suffix('.torchscript.pt').name} and its model card "
          f"{path.with_suffix('.md').name}; load it with torch.load({str(path)!r}, weights_only=True)")
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


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line naming the fix (not the whole usage block), exit 2."""

    def error(self, message: str):
        self.exit(2, f"rrdist: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rrdist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_data_parser, _pretrain_parser, _evaluate_parser, _export_parser, _sweep_parser, _report_parser,
                _submit_parser, _jobs_parser, _demo_parser):
        add(sub)
    return parser


def _data_parser(sub) -> None:
    data = sub.add_parser("data", help="prepare datasets as FFCV .beton files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    data_sub.add_parser("list", help="list the datasets")
    prep = data_sub.add_parser("prepare", help="write <root>/ffcv/<dataset>/{train,test}.beton")
    prep.add_argument("dataset")
    prep.add_argument("--root", default="data", help="folder with the dataset's files; .beton files go to ROOT/ffcv/")
    prep.add_argument("--download", action="store_true", help="download the dataset first (needs a network)")
    prep.add_argument("--image-size", type=int, default=None,
                      help="raw storage: resize images to N x N; jpeg storage: the views' size (default 224)")
    prep.add_argument("--storage", default=None,
                      help="raw (arrays of one size, read whole; the default for the paper's sets) or jpeg (image "
                           "trees of any size, streamed to JPEG records; the default for imagenet, imagenet100); "
                           "not given: as prepared before")
    prep.add_argument("--max-side", type=int, default=None,
                      help="jpeg storage: longest stored side in pixels (default: as prepared before, else 256)")
    prep.add_argument("--quality", type=int, default=None,
                      help="jpeg storage: JPEG quality, 1-100 (default: as prepared before, else 90)")
    prep.add_argument("--classes", default=None, help="image trees: a text file of the class folders to keep")
    prep.add_argument("--force", action="store_true", help="write again even if valid files exist")
    data.set_defaults(func=_data)


def _pretrain_parser(sub) -> None:
    pre = sub.add_parser("pretrain", help="self-supervised pretraining on Ray Train",
                         description="Pretrain a backbone on Ray Train. A method's own settings apply to that "
                                     "method only: giving one to another method is an error.")
    pre.add_argument("--config", help="YAML file of settings (the keys are the flags' names); flags override it")
    _add_pretrain_flags(pre)
    pre.add_argument("--address", default=None, help="Ray cluster to join (default: a private local Ray)")
    pre.set_defaults(func=_pretrain)


def _evaluate_parser(sub) -> None:
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


def _export_parser(sub) -> None:
    ex = sub.add_parser("export", help="a run's backbone as files that load with torch alone, and a model card")
    ex.add_argument("--run", required=True, help="the run folder (or its URI), or a backbone.pt")
    ex.add_argument("--to", required=True, help="the file to write (FILE; also FILE's stem + .torchscript.pt and .md)")
    ex.set_defaults(func=_export)


def _sweep_parser(sub) -> None:
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


def _report_parser(sub) -> None:
    rep = sub.add_parser("report", help="the results table of a sweep, from what is on disk")
    rep.add_argument("sweep", help="the sweep folder or URI, e.g. runs/sweeps/demo")
    rep.set_defaults(func=_report)


def _submit_parser(sub) -> None:
    sm = sub.add_parser("submit", help="run an rrdist command on a Ray cluster (Job Submission API)")
    sm.add_argument("--address", default=None, help="the head's job API (default: $RAY_API_SERVER_ADDRESS "
                    "or http://127.0.0.1:8265)")
    sm.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's status")
    sm.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the rrdist arguments, e.g. -- pretrain ...")
    sm.set_defaults(func=_submit)


def _jobs_parser(sub) -> None:
    jb = sub.add_parser("jobs", help="list jobs, show their logs or status, stop them")
    jb.add_argument("action", choices=["list", "status", "logs", "stop"])
    jb.add_argument("job_id", nargs="?")
    jb.add_argument("--address", default=None)
    jb.add_argument("--follow", action="store_true", help="with logs: stream until the job ends")
    jb.set_defaults(func=_jobs)


def _demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="pretrain on the embedded digits data, evaluate, print a table")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--workers", type=int, default=2)
    demo.set_defaults(func=_demo)


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
