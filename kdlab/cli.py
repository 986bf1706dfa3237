"""The `kdlab` command line: data, train, distill, eval, bench.

Every command takes YAML configs (``-c``, later files win) and dotted overrides
(``train.iterations=200 model.encoder=resnet34``). Paths typed here are relative to the working
directory (a ``-c`` file not found there is looked up in the project, so ``-c configs/student.yaml``
works anywhere); paths inside config files are under the project root (`kdlab.paths`). Errors in
user input print one line naming the file or option and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kdlab.config import PATH_KEYS, RUNTIME_KEYS, RunConfig, is_yaml_path, load_config, parse_override, with_overrides
from kdlab.errors import ConfigError, KdlabError


def _typed_path(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def _typed_config(path: str) -> str:
    """A ``-c`` file: in the working directory, else in the project (`kdlab.paths`)."""
    return _typed_path(path) if Path(path).expanduser().exists() else path


def _typed_override(text: str) -> str:
    """A path override (``data.root=DIR``) with its path made absolute; recipe names stay names."""
    key, value = parse_override(text)
    if key not in PATH_KEYS or not isinstance(value, str) or (key == "distill.recipe" and not is_yaml_path(value)):
        return text
    return f"{key}={_typed_path(value)}"


def _config(args) -> RunConfig:
    return load_config([_typed_config(p) for p in args.config or []], args.overrides)


def _resumed_config(args) -> RunConfig:
    """The config of the run in ``--resume DIR``, continued in DIR itself, with only the overrides a
    resumed run can honour (`RUNTIME_KEYS`)."""
    from kdlab.engine import run_config

    refused = [text for text in args.overrides if parse_override(text)[0] not in RUNTIME_KEYS]
    if args.config or refused:
        given = " ".join([*(f"-c {p}" for p in args.config or []), *refused])
        raise ConfigError(f"--resume continues {args.resume} as it was configured and cannot honour {given}; "
                          f"only {', '.join(RUNTIME_KEYS)} may change (start a new run for the rest)")
    cfg = run_config(_typed_path(args.resume))
    return with_overrides(cfg, args.overrides)


def cmd_data(args) -> None:
    from kdlab.plots.dataset_preview import save_preview
    from kdlab.engine import dataset_root

    cfg = _config(args)
    root = dataset_root(cfg)
    print(f"dataset ready: {root}")
    if args.action == "preview":
        out = save_preview(root, args.split, args.count, args.out)
        print(f"preview written: {out}")


def cmd_train(args) -> None:
    cfg = _resumed_config(args) if args.resume else _config(args)  # bad input fails before torch is imported
    from kdlab.engine import train

    run = train(cfg, resume=bool(args.resume), until=args.until)
    _print_results(run)


def cmd_distill(args) -> None:
    if args.resume:
        cfg = _resumed_config(args)
        cfg.distill.recipe = _typed_path(str(Path(args.resume) / "recipe.yaml"))  # the recipe the run started with
    else:
        if args.recipe:
            args.overrides.append(_typed_override(f"distill.recipe={args.recipe}"))
        if args.teacher:
            args.overrides.append(_typed_override(f"distill.teacher={args.teacher}"))
        cfg = _config(args)
    from kdlab.distill import distill_objective
    from kdlab.engine import train

    run = train(cfg, resume=bool(args.resume), until=args.until, objective_factory=distill_objective)
    _print_results(run)


def cmd_eval(args) -> None:
    """Scores as JSON (``--out``) and as mmseg's per-class table in percent, printed and written next
    to the JSON (``scores.json`` → ``scores.md``)."""
    cfg = _config(args)
    from kdlab.engine import evaluate_checkpoint
    from kdlab.runtime import atomic_write_text
    from kdlab.tables import scores_table

    out = args.out and Path(_typed_path(args.out))
    scores = evaluate_checkpoint(_typed_path(args.checkpoint), cfg, out=out)
    table = scores_table(scores, scores.get("class_names"))
    if out:
        atomic_write_text(out.with_suffix(".md"), table)
    print(table)
    print(json.dumps({k: v for k, v in scores.items() if isinstance(v, (int, float))}, indent=1))


def cmd_bench(args) -> None:
    cfg = _config(args)
    from kdlab.bench import run_benchmarks

    sizes = [tuple(int(v) for v in text.lower().split("x")) for text in args.size] if args.size else None
    run_benchmarks(cfg, recipes=args.recipes, rounds=args.rounds, warmup=args.warmup, out=args.out,
                   json_path=args.json, sizes=sizes, memory=not args.no_memory, cohort=not args.no_cohort,
                   pipeline_batches=args.pipeline_batches)


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
    parser = _Parser(prog="kdlab", description=__doc__.splitlines()[0])
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
    p.add_argument("--out", help="write the full scores as JSON here, and mmseg's table in percent next to it (.md)")
    _common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="ms/step, ratios to the floor and peak memory of each recipe (interleaved rounds)")
    p.add_argument("--recipes", nargs="*", default=None, help="recipe names (default: every shipped recipe)")
    p.add_argument("--rounds", type=int, default=15, help="measured rounds (one step of every row each)")
    p.add_argument("--warmup", type=int, default=2, help="discarded rounds before the measured ones")
    p.add_argument("--size", action="append", metavar="HxW",
                   help="input size, repeatable (default: data.crop_size on CPU; 512x512 and 512x1024 on CUDA)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-row peak-memory processes")
    p.add_argument("--no-cohort", action="store_true", help="skip the row of all recipes as one cohort")
    p.add_argument("--pipeline-batches", type=int, default=10,
                   help="batches timed for the input pipeline's images/s (0: skip)")
    p.add_argument("--out", default="runs/bench.md")
    p.add_argument("--json", metavar="PATH", help="one record per recipe (default: --out with .json)")
    _common(p)
    p.set_defaults(func=cmd_bench)
    return parser


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), readable before any process group."""
    return int(os.environ.get("RANK", "0"))


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors printed once under torchrun (by rank 0; see `_report`)."""

    def error(self, message: str):
        if launched_rank() > 0:
            self.exit(2)
        super().error(message)


def _report(message: str) -> None:
    """kdlab's one error line. Under torchrun only rank 0 prints it: every rank checks the same input
    before the process group forms, so every rank meets the same error."""
    if launched_rank() == 0:
        print(f"kdlab: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    try:
        # key=value pairs may follow options too
        args.overrides = [_typed_override(text) for text in [*getattr(args, "overrides", []), *extra]]
        args.func(args)
    except KdlabError as err:
        _report(str(err))
        return 2
    except (OSError, RuntimeError) as err:
        # A full disk or a read-only directory met outside an atomic write (a log line, the run lock).
        from kdlab.runtime import storage_error

        translated = storage_error(err, getattr(err, "filename", None))
        if translated is None:
            raise
        _report(str(translated))
        return 2
    except KeyboardInterrupt:
        print("kdlab: interrupted (the last checkpoint is intact; continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
