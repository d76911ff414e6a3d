"""`edropout-ray` (also `python -m edropout_ray`): train, compare, sweep, models, download, convert.

User mistakes become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import ConfigError, EDropoutError


SHARED_HELP = ("the local --output (or --resume) folder is on a mount every node of the cluster sees (NFS, EFS, "
               "Filestore, a Kubernetes volume); without it a local folder is refused on a multi-node cluster")
OUTPUT_HELP = "folder, or pyarrow.fs URI (s3://bucket/path, gs://..., with options such as ?endpoint_override=host:port)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edropout-ray", description="Prune networks with EDropout.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="prune a model with EDropout and write a report")
    train.add_argument("--config", help="YAML file of config keys (keys: docs/config.md)")
    train.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                       help="override config keys: --set a=1 b=2, or --set a=1 --set b=2; values are read as YAML")
    train.add_argument("--output", help=f"{OUTPUT_HELP}, for report.json, the pruned model, history, plot, checkpoints")
    train.add_argument("--resume", metavar="DIR", help="continue the interrupted run whose output (folder or URI) is DIR")
    train.add_argument("--shared-mount", action="store_true", help=SHARED_HELP)
    train.add_argument("--address", help="join a Ray cluster ('auto' or 'ray://host:10001'); default: start a "
                       "local Ray when shards > 0 (inside `ray job submit` the job's cluster is used)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    compare = commands.add_parser("compare", help="EDropout against DropNet, random and L1 pruning, over seeds")
    compare.add_argument("--config", help="YAML file of config keys (the budget every method gets)")
    compare.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                         help="override config keys, as train's --set")
    compare.add_argument("--output", help=f"{OUTPUT_HELP}, for every run's folder, runs.parquet, "
                         "summary.parquet, comparison.md/.png")
    compare.add_argument("--resume", metavar="DIR", help="continue the comparison in DIR with its saved config, "
                         "seeds and methods: runs that finished are reused, the others run")
    compare.add_argument("--shared-mount", action="store_true", help=SHARED_HELP)
    compare.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    compare.add_argument("--address", help="join a Ray cluster; default: a local Ray")
    compare.add_argument("--methods", help="comma-separated methods besides edropout (default: all)")
    compare.add_argument("--phase-cache", metavar="DIR", help="a folder where runs train alike dense phases once "
                         "(shared by several comparisons of the same models and seeds; default: shared_phases "
                         "in a local --output)")

    sweep = commands.add_parser("sweep", help="Ray Tune sweep over config keys (grid, random, ASHA, PBT)")
    sweep.add_argument("--config", help="sweep YAML: base, search, scheduler, ... (keys: docs/config.md)")
    sweep.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                       help="override keys of the sweep file's base (not swept ones); values are read as YAML")
    sweep.add_argument("--output", help=f"{OUTPUT_HELP}, for the sweep: Tune's experiment, trials.parquet, "
                       "pareto.png, best/")
    sweep.add_argument("--resume", metavar="DIR", help="continue the interrupted sweep in DIR (folder or URI)")
    sweep.add_argument("--shared-mount", action="store_true", help=SHARED_HELP)
    sweep.add_argument("--address", help="join a Ray cluster; default: a local Ray")

    models = commands.add_parser("models", help="list the architectures that can be pruned, or check one")
    models.add_argument("--check", metavar="NAME", help="build NAME (e.g. resnet18, timm:convnext_atto) and say "
                        "what would be pruned and whether the exported model matches the masked one")
    models.add_argument("--image-size", type=int, default=64, help="input size for --check (default 64)")
    models.add_argument("--in-channels", type=int, default=3, help="input channels for --check (default 3)")
    models.add_argument("--keep-layers", action="append", default=[], metavar="PATTERN",
                        help="with --check: a layer whose outputs are kept, as the config's keep_layers (repeatable)")

    download = commands.add_parser("download", help="fetch a torchvision data set (needs internet)")
    download.add_argument("dataset")
    download.add_argument("--data-dir", default="data")

    convert = commands.add_parser("convert", help="image folder (train/, val/, optional test/ of <class>/<image>) "
                                  "to Parquet shards for `dataset: parquet`")
    convert.add_argument("source", help="ImageNet-style folder: SOURCE/train/<class>/<image>, SOURCE/val/...")
    convert.add_argument("destination", help="folder for <split>/part-NNNNN.parquet and classes.json")
    convert.add_argument("--rows-per-shard", type=int, default=1000, metavar="N",
                         help="images per Parquet file (default 1000)")
    return parser


def _train(args) -> None:
    from .config import load_config, parse_override

    if bool(args.output) == bool(args.resume):
        raise ConfigError("give --output DIR for a new run, or --resume DIR to continue one (not both)")
    folder = args.resume or args.output
    if args.resume:  # the saved config, with what the user gave on top: any real change is refused
        from .artifacts.checkpoint import load_saved_config

        base = load_config(args.config) if args.config else load_saved_config(folder)
        given = base.replace(**dict(parse_override(text) for text in args.overrides))
    else:
        given = load_config(args.config, args.overrides)
    from .artifacts.report import format_table  # torch: only once the config is valid
    from .train import run

    report = run(given, folder, progress=not args.quiet, resume=bool(args.resume), address=args.address,
                 shared_mount=args.shared_mount)
    print(format_table(report))
    print(f"\nwritten to {folder}/ (report.json, pruned model, history.parquet, training.png)")


def _compare(args) -> None:
    from .config import load_config

    if bool(args.output) == bool(args.resume):
        raise ConfigError("give --output DIR for a new comparison, or --resume DIR to continue one (not both)")
    if args.resume:
        given = [name for name, value in (("--config", args.config), ("--set", args.overrides),
                                          ("--seeds", args.seeds), ("--methods", args.methods)) if value]
        if given:
            raise ConfigError(f"--resume continues the comparison with the config, seeds and methods saved in "
                              f"{args.resume}; drop {', '.join(given)}")
        from .compare import load_saved_comparison

        config, seeds, methods = load_saved_comparison(args.resume)
    else:
        try:
            seeds = [int(s) for s in (args.seeds or "0,1,2").split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        methods = args.methods.split(",") if args.methods else None
        config = load_config(args.config, args.overrides)
    from .artifacts.storage import open_folder  # Ray and torch: only once the config is valid
    from .compare import compare

    folder = args.resume or args.output
    compare(config, folder, seeds, address=args.address, methods=methods, shared_mount=args.shared_mount,
            resume=bool(args.resume), phase_cache=args.phase_cache)
    print(open_folder(folder).read_text("comparison.md"))
    print(f"written to {folder}/ (runs.parquet, summary.parquet, comparison.md, comparison.png)")


def _sweep(args) -> None:
    from .sweep import load_saved_spec, load_sweep

    if bool(args.output) == bool(args.resume):
        raise ConfigError("give --config FILE --output DIR for a new sweep, or --resume DIR to continue one")
    if args.resume:
        if args.config or args.overrides:
            raise ConfigError(f"--resume continues the sweep saved in {args.resume}; drop --config and --set")
        spec = load_saved_spec(args.resume)
    elif not args.config:
        raise ConfigError("a new sweep needs --config FILE")
    else:
        spec = load_sweep(args.config, args.overrides)
    from .sweep import run_sweep  # Ray Tune and torch: only once the sweep file is valid

    folder = args.resume or args.output
    rows = run_sweep(spec, folder, resume=bool(args.resume), address=args.address, shared_mount=args.shared_mount)
    for row in sorted(rows, key=lambda r: -r["objective"]):
        swept = ", ".join(f"{k}={row[k]}" for k in dict.fromkeys([*spec.search, *spec.mutations]) if k in row)
        print(f"{'*' if row['pareto'] else ' '} val top-1 {row['val_top1']:6.2f}%  params kept "
              f"{row['params_kept_fraction']:6.1%}  objective {row['objective']:7.2f}  {swept}")
    print(f"\n* = Pareto front. Written to {folder}/ (trials.parquet, pareto.png, best/)")


def _convert(args) -> None:
    from .data.streaming import convert_image_folder

    counts = convert_image_folder(args.source, args.destination, rows_per_shard=args.rows_per_shard)
    print(", ".join(f"{split}: {n} images" for split, n in counts.items()) + f"; written to {args.destination}/")


def _models(args) -> None:
    from .catalog import check, listing

    print(check(args.check, args.image_size, args.in_channels, keep_layers=tuple(args.keep_layers)) if args.check
          else listing())


def _download(args) -> None:
    from .data import download_dataset

    path = download_dataset(args.dataset, args.data_dir)
    print(f"{args.dataset} is in {path}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        {"train": _train, "compare": _compare, "sweep": _sweep, "download": _download,
         "convert": _convert, "models": _models}[args.command](args)
    except (EDropoutError, FileNotFoundError, ValueError) as error:
        print(f"edropout-ray: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)  # 3: the run was lost, not the user's mistake
    except KeyboardInterrupt as interrupt:
        print(f"edropout-ray: interrupted{': ' + str(interrupt) if str(interrupt) else ''}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
