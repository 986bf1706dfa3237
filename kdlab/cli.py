"""The `kdlab` command line: data, train, distill, eval, bench.

Every command takes YAML configs (``-c``, later files win) and dotted overrides
(``train.iterations=200 model.encoder=resnet34``). Errors in user input print one line
naming the file or option and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kdlab.config import RunConfig, load_config
from kdlab.errors import KdlabError


def _config(args) -> RunConfig:
    return load_config(args.config or [], args.overrides)


def cmd_data(args) -> None:
    from kdlab.data.preview import save_preview
    from kdlab.engine import dataset_root

    cfg = _config(args)
    root = dataset_root(cfg)
    print(f"dataset ready: {root}")
    if args.action == "preview":
        out = save_preview(root, args.split, args.count, args.out)
        print(f"preview written: {out}")


def cmd_train(args) -> None:
    from kdlab.engine import run_config, train

    cfg = run_config(args.resume) if args.resume else _config(args)
    run = train(cfg, resume=bool(args.resume), until=args.until)
    _print_results(run)


def cmd_distill(args) -> None:
    from kdlab.distill import distill_objective
    from kdlab.engine import run_config, train

    if args.resume:
        cfg = run_config(args.resume)
        cfg.distill.recipe = str(Path(args.resume) / "recipe.yaml")  # the recipe the run started with
    else:
        overrides = list(args.overrides)
        if args.recipe:
            overrides.append(f"distill.recipe={args.recipe}")
        if args.teacher:
            overrides.append(f"distill.teacher={args.teacher}")
        cfg = load_config(args.config or [], overrides)
    run = train(cfg, resume=bool(args.resume), until=args.until, objective_factory=distill_objective)
    _print_results(run)


def cmd_eval(args) -> None:
    from kdlab.engine import evaluate_checkpoint

    cfg = _config(args)
    scores = evaluate_checkpoint(args.checkpoint, cfg, out=args.out)
    print(json.dumps({k: v for k, v in scores.items() if isinstance(v, (int, float))}, indent=1))


def cmd_bench(args) -> None:
    from kdlab.bench import run_benchmarks

    run_benchmarks(_config(args), recipes=args.recipes, iterations=args.iterations, out=args.out)


def _print_results(run: Path) -> None:
    results = run / "results.json"
    if results.exists():
        scores = json.loads(results.read_text())
        print(f"{run}: mIoU {scores['mIoU']:.4f}  mAcc {scores['mAcc']:.4f}  aAcc {scores['aAcc']:.4f}  "
              f"trimap mIoU {scores.get('trimap_mIoU', float('nan')):.4f}")
    else:
        print(f"{run}: stopped early; continue with --resume {run}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", action="append", help="YAML config (repeatable; later files win)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.iterations=200")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="generate the embedded benchmark or preview a dataset")
    p.add_argument("action", choices=["generate", "preview"])
    p.add_argument("--split", default="train")
    p.add_argument("--count", type=int, default=8, help="images in the preview grid")
    p.add_argument("--out", default="figures/dataset_preview.png")
    _common(p)
    p.set_defaults(func=cmd_data)

    for name, func, help_text in (("train", cmd_train, "supervised training (teacher or student baseline)"),
                                  ("distill", cmd_distill, "train a student from a frozen teacher with a recipe")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
        p.add_argument("--until", type=int, help="stop after this iteration (the schedule still spans all)")
        if name == "distill":
            p.add_argument("--recipe", help="recipe name (configs/recipes/NAME.yaml) or YAML path")
            p.add_argument("--teacher", help="teacher checkpoint or run directory")
        _common(p)
        p.set_defaults(func=func)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the validation split")
    p.add_argument("checkpoint", help="checkpoint file or run directory")
    p.add_argument("--out", help="write the full scores as JSON here")
    _common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="ms/iteration and peak memory of each recipe vs the baseline")
    p.add_argument("--recipes", nargs="*", default=None, help="recipe names (default: every shipped recipe)")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--out", default="runs/bench.md")
    _common(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]  # key=value pairs may follow options too
    try:
        args.func(args)
    except KdlabError as err:
        print(f"kdlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdlab: interrupted (the last checkpoint is intact; continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
