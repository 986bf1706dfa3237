"""Experiment profiles and cached runs: what `make figures` trains, reused when nothing changed.

A profile (``configs/profiles/<name>.yaml``) is configuration only::

    base: [data.image_size=128, ...]          # overrides applied to every run
    teacher: {config: configs/teacher.yaml, overrides: [...]}
    student: {config: configs/student.yaml, overrides: [...]}
    seeds: [0, 1]                             # seeds of the student baseline and each recipe
    recipes: [kd, cwd, bpkd_embedded, ...]    # the method comparison
    ablations: {bpkd_table4: [bpkd_prm, ...], ...}   # groups of recipes (or {student: CONFIG, recipes: [...]})
    ablation: {seeds: [0], overrides: [train.iterations=300]}   # ablation seeds and schedule
    jobs: 2                                   # runs trained at once (worker processes); default 1

Runs live in ``<runs_root>/<profile>/<run name>`` (the runs root defaults to the project's
``runs/``, or ``$KDLAB_RUNS_ROOT``; relative paths anywhere in a profile are under the project
root, `kdlab.paths`). `ensure_run` reuses a finished run whose resolved config (and recipe) is
unchanged, wherever the runs root lives and whatever device it ran on, and resumes an unfinished one.
A run whose config changed is moved aside to ``<name>.stale-<k>`` (never deleted) and trained again;
a *finished* one only when asked (``retrain``), else it is a one-line `ConfigError` before any
training. Runs that differ only in their recipe train as cohorts that share one teacher
pass per batch (`cohorts`); with ``jobs`` > 1, that many cohorts train at a time, each worker
with an equal share of the CPU threads.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import statistics
import threading
import time

import torch
import yaml
from dataclasses import dataclass, field, replace
from pathlib import Path
from tqdm import tqdm

from kdlab import stats
from kdlab.checkpoint import checkpoint_iteration
from kdlab.config import (RUNTIME_KEYS, RunConfig, config_from_dict, config_to_dict, dump_config, flatten,
                          load_config, named_yaml, read_yaml)
from kdlab.distill import distill_objective, recipe_path
from kdlab.engine import NonFiniteLoss, RunDir, cohort_key, dataset_root, supervised_objective, train_cohort
from kdlab.errors import ConfigError
from kdlab.paths import default_runs_root, project_path, project_root
from kdlab.runtime import atomic_write_text

DIVERGED = "diverged.json"  # written instead of results.json when a loss term became NaN/inf
_PROFILE_KEYS = {"description", "base", "teacher", "student", "seeds", "recipes", "ablations", "ablation",
                 "figures_dir", "analysis", "jobs"}


@dataclass
class RunSpec:
    config: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Profile:
    name: str
    base: list[str]
    teacher: RunSpec
    student: RunSpec
    seeds: list[int]
    recipes: list[str]
    ablations: dict[str, list[str]]
    ablation_seeds: list[int]
    ablation_overrides: list[str]
    figures_dir: str
    analysis: dict
    runs_root: Path = Path("runs")
    jobs: int = 1
    retrain: bool = False  # retrain finished runs whose config changed (else they are an error)

    @property
    def runs_dir(self) -> Path:
        return project_path(self.runs_root) / self.name


def profile_path(profile: str) -> Path:
    return named_yaml(profile, project_root() / "configs" / "profiles", "profile")


def load_profile(profile: str, runs_root: str | Path | None = None, figures_dir: str | None = None,
                 device: str = "auto", *, dataset: str | None = None, data_root: str | None = None,
                 recipes: list[str] | None = None, seeds: list[int] | None = None,
                 jobs: int | None = None, retrain: bool = False) -> Profile:
    """The profile named (or at the path) `profile`; the keyword arguments, where given, replace its
    dataset, dataset root, comparison recipes and seeds, and number of parallel runs (notebook parameters);
    ``retrain`` lets its finished runs whose config changed be set aside and trained again.
    ``runs_root`` None is `kdlab.paths.default_runs_root`; ``figures_dir`` None is the profile's
    ``figures_dir`` (``{runs_dir}`` in it stands for this profile's runs directory; default
    ``{runs_dir}/figures``), under the project root when relative."""
    path = profile_path(profile)
    tree = read_yaml(path)
    unknown = set(tree) - _PROFILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; valid: {sorted(_PROFILE_KEYS)}")
    for key in ("teacher", "student"):
        if not isinstance(tree.get(key), dict) or "config" not in tree[key]:
            raise ConfigError(f"{path}: '{key}' needs a 'config' entry")
    jobs = tree.get("jobs", 1) if jobs is None else jobs
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"{path}: jobs must be a positive integer, got {jobs!r}")
    data = [f"data.{key}={value}" for key, value in (("name", dataset), ("root", data_root)) if value is not None]
    recipes = list(tree.get("recipes", []) if recipes is None else recipes)
    for name in recipes:
        recipe_path(split_matched(name)[0])  # an unknown recipe fails here, listing the available ones
    ablation = tree.get("ablation", {})
    runs_root = Path(runs_root or default_runs_root())
    figures_dir = figures_dir or tree.get("figures_dir", "{runs_dir}/figures")
    figures_dir = str(project_path(str(figures_dir).format(runs_dir=project_path(runs_root) / path.stem)))
    return Profile(
        name=path.stem, base=[*tree.get("base", []), *data, f"train.device={device}"],
        teacher=RunSpec(**tree["teacher"]), student=RunSpec(**tree["student"]),
        seeds=list(tree.get("seeds", [0]) if seeds is None else seeds),
        recipes=recipes,
        ablations=dict(tree.get("ablations", {})), ablation_seeds=list(ablation.get("seeds", [0])),
        ablation_overrides=list(ablation.get("overrides", [])),
        figures_dir=figures_dir, analysis=dict(tree.get("analysis", {})), runs_root=runs_root, jobs=jobs,
        retrain=retrain,
    )


def run_config(profile: Profile, spec: RunSpec, name: str, overrides: list[str] = ()) -> RunConfig:
    return load_config([spec.config], [*profile.base, *spec.overrides, f"name={name}",
                                       f"out_dir={profile.runs_dir}", *overrides])


def teacher_config(profile: Profile) -> RunConfig:
    return run_config(profile, profile.teacher, "teacher")


MATCHED = "@matched"  # a recipe label's suffix: that recipe under the matched weight rule (README: the weight rule)


def split_matched(recipe: str) -> tuple[str, bool]:
    """A recipe label's recipe, and whether the label asks for the matched weight rule (``kd@matched``)."""
    return (recipe.removesuffix(MATCHED), True) if recipe.endswith(MATCHED) else (recipe, False)


def recipe_label(recipe: str) -> str:
    """A recipe's label in tables and run names: its name or file stem, plus ``@matched`` if asked for."""
    base, matched = split_matched(recipe)
    return Path(base).stem + (MATCHED if matched else "")


def student_config(profile: Profile, seed: int, recipe: str | None = None, overrides: list[str] = (),
                   student: RunSpec | None = None) -> RunConfig:
    """The student baseline (recipe None) or a distilled student, for one seed (of the profile's
    student, or of `student`). The run is named after the recipe label (`recipe_label`), so one
    recipe and seed is one run whatever table lists it."""
    name = f"{recipe_label(recipe) if recipe else 'baseline'}-s{seed}"
    extra = [f"train.seed={seed}", *overrides]
    if recipe:
        base, matched = split_matched(recipe)
        extra += [f"distill.recipe={base}", f"distill.teacher={profile.runs_dir / 'teacher'}"]
        extra += ["distill.weight_rule=matched"] if matched else []
    return run_config(profile, student or profile.student, name, extra)


def _recipe_text(cfg: RunConfig) -> str:
    return recipe_path(cfg.distill.recipe).read_text() if cfg.distill.recipe else ""


# Where a run lives, where its teacher lives and how it computes do not change what it is.
_NOT_WHAT_IT_IS = ("name", "out_dir", "distill.teacher", *RUNTIME_KEYS)


def config_changes(old: RunConfig, new: RunConfig) -> list[str]:
    """The dotted keys whose values differ between two configs, location and `RUNTIME_KEYS` aside."""
    a, b = flatten(config_to_dict(old)), flatten(config_to_dict(new))
    return sorted(key for key in a.keys() | b.keys() if key not in _NOT_WHAT_IT_IS and a.get(key) != b.get(key))


def run_state(cfg: RunConfig) -> str:
    """'done' (reusable), 'partial' (same config, unfinished), 'stale' (config changed) or 'new'."""
    run = RunDir(cfg.run_dir)
    if not run.config.exists():
        return "new"
    recipe_file = run.path / "recipe.yaml"
    same_recipe = (recipe_file.read_text() if recipe_file.exists() else "") == _recipe_text(cfg)
    if config_changes(config_from_dict(read_yaml(run.config)), cfg) or not same_recipe:
        return "stale"
    if is_finished(run.path):
        return "done"
    return "partial" if run.checkpoint.exists() else "stale"


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "results.json").exists() or (run_dir / DIVERGED).exists()


def _changed_keys(cfg: RunConfig) -> list[str]:
    old = config_from_dict(read_yaml(RunDir(cfg.run_dir).config))
    return config_changes(old, cfg) or ["the recipe"]


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")


def refuse_stale_finished(configs: list[RunConfig], retrain: bool = False) -> None:
    """A `ConfigError` naming the first finished run of `configs` whose config changed since it ran,
    unless `retrain`: such a run is retrained (after `set_aside`) only when asked."""
    stale = [cfg for cfg in configs if run_state(cfg) == "stale" and is_finished(cfg.run_dir)]
    if stale and not retrain:
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        raise ConfigError(f"{stale[0].run_dir}: finished under another config ({_listed(_changed_keys(stale[0]))})"
                          f"{more}; it is kept as it is. To keep it as <name>.stale-<k> and train it again, pass "
                          f"--retrain (notebooks: retrain = True)")


MAX_COHORT = 12  # runs trained together in one process; each holds its weights and optimiser state


def cohorts(configs: list[RunConfig], jobs: int = 1, max_size: int = MAX_COHORT) -> list[list[RunConfig]]:
    """Runs to train together. Runs that differ only in name and recipe and start from the same
    iteration (0, or the checkpoint an interrupted cohort left) form a cohort (one data stream, one
    teacher pass per batch, `kdlab.engine.train_cohort`), split round-robin into at least `jobs`
    parts, so that parallel workers stay busy, of at most `max_size` runs. Largest first."""
    groups: dict[tuple[str, int], list[RunConfig]] = {}
    for cfg in configs:
        start = checkpoint_iteration(RunDir(cfg.run_dir).checkpoint) if run_state(cfg) == "partial" else 0
        groups.setdefault((dump_config(cohort_key(cfg)), start), []).append(cfg)
    parts = []
    for group in groups.values():
        n = min(len(group), max(jobs, math.ceil(len(group) / max_size)))
        parts += [group[i::n] for i in range(n)]
    return sorted(parts, key=len, reverse=True)  # largest first: parallel workers finish together


def ensure_cohort(cfgs: list[RunConfig], progress: bool = True) -> None:
    """Train the runs of one cohort (see `cohorts`); a run whose loss became NaN/inf is recorded as
    diverged (a result) and the others go on."""
    states = [run_state(cfg) for cfg in cfgs]
    for cfg, state in zip(cfgs, states):
        if state == "stale":
            set_aside(cfg)
    factory = distill_objective if cfgs[0].distill.recipe else supervised_objective
    outcomes = train_cohort(cfgs, resume=states[0] == "partial", objective_factory=factory, progress=progress)
    for cfg, outcome in zip(cfgs, outcomes):
        if isinstance(outcome, NonFiniteLoss):
            atomic_write_text(cfg.run_dir / DIVERGED, json.dumps({"iteration": outcome.iteration, "error": str(outcome)}))
            print(f"{cfg.name}: diverged ({outcome})")


def set_aside(cfg: RunConfig) -> Path:
    """Move the stale run directory of ``cfg`` to ``<name>.stale-<k>`` beside it (kept, never
    deleted), saying why; returns the new place."""
    changed = _changed_keys(cfg)
    k = 1
    while (aside := cfg.run_dir.with_name(f"{cfg.run_dir.name}.stale-{k}")).exists():
        k += 1
    cfg.run_dir.rename(aside)
    print(f"{cfg.run_dir}: its config changed ({_listed(changed)}); the old run is kept as {aside.name}, retraining")
    return aside


def ensure_run(cfg: RunConfig, progress: bool = True, retrain: bool = False) -> Path:
    """Train the run described by `cfg` unless an identical finished run exists; returns its directory.
    A finished run with another config is retrained only with `retrain` (`refuse_stale_finished`)."""
    refuse_stale_finished([cfg], retrain)
    if run_state(cfg) != "done":
        ensure_cohort([cfg], progress)
    return cfg.run_dir


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(2)
    os._exit(1)  # the notebook kernel is gone (interrupted run): stop training for nobody


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _train_quietly(cfgs: list[RunConfig]) -> list[str]:
    ensure_cohort(cfgs, progress=False)
    return [cfg.name for cfg in cfgs]


def ensure_runs(configs: list[RunConfig], jobs: int = 1, progress: bool = True, retrain: bool = False) -> None:
    """Train every run of `configs` that is not done, in cohorts (`cohorts`), `jobs` cohorts at a time;
    finished runs with another config only with `retrain` (`refuse_stale_finished`).
    Parallel cohorts train in spawned worker processes with an equal share of the CPU threads (the
    progress bar counts runs and names the last cohort finished); an error (or an interrupt) in any of
    them stops them all."""
    refuse_stale_finished(configs, retrain)
    todo = cohorts([cfg for cfg in configs if run_state(cfg) != "done"], jobs)
    if jobs == 1 or len(todo) < 2:
        for cfgs in todo:
            ensure_cohort(cfgs, progress)
        return
    for cfgs in todo:
        dataset_root(cfgs[0])  # generate a missing dataset once, not in every worker
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(jobs, len(todo)), _start_worker, (threads,)) as pool:  # leaving it terminates workers
        runs = sum(len(cfgs) for cfgs in todo)
        bar = tqdm(total=runs, desc=f"{runs} runs in {len(todo)} cohorts, {jobs} at a time", disable=not progress,
                   dynamic_ncols=True)
        for names in pool.imap_unordered(_train_quietly, todo):
            bar.set_postfix_str(f"finished {', '.join(names)}")
            bar.update(len(names))
        bar.close()


def ensure_teacher(profile: Profile, progress: bool = True) -> Path:
    return ensure_run(teacher_config(profile), progress, profile.retrain)


def student_configs(profile: Profile, recipes: dict[str, str | None], seeds: list[int],
                    overrides: list[str] = (), student: RunSpec | None = None) -> dict[tuple[str, int], RunConfig]:
    """(label, seed) → config of the student for each label → recipe (None = the baseline) and seed."""
    return {(label, seed): student_config(profile, seed, recipe, overrides, student)
            for label, recipe in recipes.items() for seed in seeds}


def ensure_students(profile: Profile, configs: list[RunConfig], progress: bool = True) -> None:
    """Train what `configs` needs: the teacher first if any of them distills, then every student
    (nothing, if a finished run among them changed and the profile does not say ``retrain``)."""
    teacher = [teacher_config(profile)] if any(cfg.distill.recipe for cfg in configs) else []
    refuse_stale_finished([*teacher, *configs], profile.retrain)
    if teacher:
        ensure_run(teacher[0], progress, profile.retrain)
    ensure_runs(configs, profile.jobs, progress, profile.retrain)


def profile_configs(profile: Profile) -> list[RunConfig]:
    """Every run the profile trains: teacher, comparison and ablations."""
    students = [*comparison_configs(profile).values(),
                *(cfg for group in profile.ablations for cfg in ablation_configs(profile, group, write=False).values())]
    return [teacher_config(profile), *students]


def _run_dirs(configs: dict[tuple[str, int], RunConfig]) -> dict[tuple[str, int], Path]:
    return {key: cfg.run_dir for key, cfg in configs.items()}


def comparison_configs(profile: Profile) -> dict[tuple[str, int], RunConfig]:
    """(label, seed) → config of the student baseline and of every recipe of the method comparison."""
    return student_configs(profile, {"baseline": None, **{name: name for name in profile.recipes}}, profile.seeds)


def ensure_comparison(profile: Profile, progress: bool = True) -> dict[tuple[str, int], Path]:
    """Teacher, student baseline and every recipe of the profile's method comparison:
    (label, seed) → run directory."""
    configs = comparison_configs(profile)
    ensure_students(profile, list(configs.values()), progress)
    return _run_dirs(configs)


def ablation_configs(profile: Profile, group: str, write: bool = True) -> dict[tuple[str, int], RunConfig]:
    """One ablation group plus a baseline on the same schedule and student. Ablations with schedule
    overrides live in `<profile>/ablations/`; without, they share the comparison's runs (same recipe
    and seed = the same run, trained once). A group with its own student (`ablation_student`) lives
    in `students/<its config's stem>/` below that, with its own baseline."""
    if group not in profile.ablations:
        raise ConfigError(f"profile {profile.name!r}: no ablation group {group!r}; groups: {sorted(profile.ablations)}")
    out_dir = profile.runs_dir / "ablations" if profile.ablation_overrides else profile.runs_dir
    student = ablation_student(profile, group)
    if student is not None:
        out_dir = out_dir / "students" / Path(student.config).stem
    overrides = [*profile.ablation_overrides, f"out_dir={out_dir}"]
    recipes = {"baseline": None, **ablation_recipes(profile, group, write)}
    return student_configs(profile, recipes, profile.ablation_seeds, overrides, student)


def ablation_student(profile: Profile, group: str) -> RunSpec | None:
    """The student of an ablation group written ``{student: CONFIG, recipes: [...]}`` (PPD's rows on
    a DeepLabV3+ student), with the profile student's overrides (its schedule); else None: the
    profile's student."""
    spec = profile.ablations[group]
    if isinstance(spec, dict) and "student" in spec:
        return RunSpec(spec["student"], list(profile.student.overrides))
    return None


def ensure_ablations(profile: Profile, progress: bool = True) -> dict[str, dict[tuple[str, int], Path]]:
    """Every ablation group of the profile, trained as one queue (parallel runs stay busy across
    groups): group → (label, seed) → run directory."""
    groups = {group: ablation_configs(profile, group) for group in profile.ablations}
    unique = {cfg.run_dir: cfg for configs in groups.values() for cfg in configs.values()}
    ensure_students(profile, list(unique.values()), progress)
    return {group: _run_dirs(configs) for group, configs in groups.items()}


def ablation_recipes(profile: Profile, group: str, write: bool = True) -> dict[str, str]:
    """label → recipe of an ablation group: a list of recipe labels, or a sweep
    ``{base: bpkd, vary: {options.edge_width: [3, 5, 7]}}`` over the first method of a recipe
    (the value the base recipe already has is the base recipe itself, trained once; a base
    ``bpkd@matched`` sweeps under the matched weight rule)."""
    spec = profile.ablations[group]
    if isinstance(spec, dict) and set(spec) == {"student", "recipes"} and isinstance(spec["recipes"], list):
        spec = spec["recipes"]
    if isinstance(spec, list):
        return {recipe_label(name): name for name in spec}
    if not isinstance(spec, dict) or set(spec) != {"base", "vary"} or len(spec["vary"]) != 1:
        raise ConfigError(f"profile {profile.name!r}: ablations.{group} must be a list of recipes, "
                          f"{{base: recipe, vary: {{key: [values]}}}} or {{student: config, recipes: [...]}}")
    (key, values), = spec["vary"].items()
    base, matched = split_matched(spec["base"])  # a matched base: every sweep point under the matched rule
    suffix = MATCHED if matched else ""
    return {f"{base}@{key.split('.')[-1]}={value}{suffix}": derived_recipe(profile, base, key, value, write) + suffix
            for value in values}


def derived_recipe(profile: Profile, base: str, key: str, value, write: bool = True) -> str:
    """Recipe `base` with `key` (dotted, inside its first method entry) set to `value`: `base` itself
    where it already has that value, else the path of a derived copy (written unless `write` is False:
    the path alone names the run)."""
    tree = read_yaml(recipe_path(base))
    node = tree["methods"][0]
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    if node.get(leaf) == value:
        return base
    node[leaf] = value
    tree["description"] = f"{tree.get('description', base)} [{key}={value}]"
    path = profile.runs_dir / "recipes" / f"{base}@{key.split('.')[-1]}={value}.yaml"
    text = yaml.safe_dump(tree, sort_keys=False)
    if write and (not path.exists() or path.read_text() != text):
        atomic_write_text(path, text)
    return str(path)


def read_results(run_dir: str | Path) -> dict:
    """A run's scores; a diverged run has NaN scores and its `diverged` iteration."""
    path = Path(run_dir) / "results.json"
    if path.exists():
        return json.loads(path.read_text())
    diverged = Path(run_dir) / DIVERGED
    if diverged.exists():
        return {metric: float("nan") for metric in SUMMARY_METRICS} | json.loads(diverged.read_text())
    raise ConfigError(f"{path}: run has no results (not finished)")


SUMMARY_METRICS = ("mIoU", "mAcc", "trimap_mIoU", "edge_pixel_accuracy", "body_mIoU")
NARROW_BAND_WIDTHS = (1, 2, 3)  # trimap widths (px at 128 px) reported beside the default band: summary column trimap_mIoU@<w>
OK, COLLAPSED = "ok", "collapsed"


def run_status(run_dir: str | Path) -> str:
    """'diverged' (a diverged.json, or a NaN final mIoU), 'collapsed' (final mIoU below the first
    evaluation's, the first record of an eval.jsonl that holds more than the final one) or 'ok'.
    Diverged and collapsed runs are counted, never averaged in (`summary_rows`, `kdlab.claims`)."""
    results = read_results(run_dir)
    final = results.get("mIoU")
    if "error" in results or final is None or not math.isfinite(final):
        return stats.DIVERGED
    log = Path(run_dir) / "eval.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    first = records[0].get("mIoU") if len(records) > 1 else None
    return COLLAPSED if first is not None and math.isfinite(first) and final < first else OK


def result_value(results: dict, metric: str) -> float:
    """One score of a results dict: a top-level metric, ``trimap_mIoU@<w>`` (its trimap curve at w
    px) or ``trimap_relative@<fraction>`` (a band of ``eval.relative_band_widths``); NaN where the run
    did not measure it."""
    if metric.startswith("trimap_mIoU@"):
        value = (results.get("trimap_curve") or {}).get(metric.split("@", 1)[1])
    elif metric.startswith("trimap_relative@"):  # a band of eval.relative_band_widths, by its fraction
        value = (results.get("trimap_relative_curve") or {}).get(metric.split("@", 1)[1])
    else:
        value = results.get(metric)
    return float(value) if stats.is_finite(value) else math.nan


def _seed_scores(runs: dict[tuple[str, int], Path]) -> dict[str, dict[int, tuple[str, dict]]]:
    """label → seed → (run status, results)."""
    out: dict[str, dict[int, tuple[str, dict]]] = {}
    for (label, seed), run in runs.items():
        out.setdefault(label, {})[seed] = (run_status(run), read_results(run))
    return out


def summary_rows(runs: dict[tuple[str, int], Path], teacher: Path | None = None) -> list[dict]:
    """One row per label: mean and std over its clean seeds of each summary metric (and of the
    narrow-band trimap mIoU, ``trimap_mIoU@<w>``), the runs that diverged or collapsed (counted, not
    averaged in), and Δ mIoU vs the baseline as the mean of paired differences (seed s minus
    baseline seed s, clean pairs only) with its 95 % Student-t interval (`kdlab.stats`). The
    teacher (one run, no seed to pair) gets the difference of means and no interval."""
    by_label = _seed_scores(runs)
    if teacher is not None:
        by_label = {"teacher": {0: (run_status(teacher), read_results(teacher))}, **by_label}
    metrics = (*SUMMARY_METRICS, *(f"trimap_mIoU@{w}" for w in NARROW_BAND_WIDTHS))
    base = {seed: result_value(r, "mIoU") if status == OK else None
            for seed, (status, r) in by_label.get("baseline", {}).items()}
    rows = []
    for label, seeds in by_label.items():
        clean = [r for status, r in seeds.values() if status == OK]
        row = {"method": label, "seeds": len(seeds),
               "diverged": sum(status == stats.DIVERGED for status, _r in seeds.values()),
               "collapsed": sum(status == COLLAPSED for status, _r in seeds.values())}
        for metric in metrics:
            values = [v for v in (result_value(r, metric) for r in clean) if math.isfinite(v)]
            row[metric] = statistics.fmean(values) if values else float("nan")
            if metric in SUMMARY_METRICS:  # the narrow bands: means only, to keep the table readable
                row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        if label == "teacher":
            clean_base = [v for v in base.values() if v is not None]
            row.update(delta_mIoU=row["mIoU"] - (statistics.fmean(clean_base) if clean_base else math.nan),
                       delta_ci95_low=math.nan, delta_ci95_high=math.nan, pairs=0)
        else:
            mine = {seed: result_value(r, "mIoU") if status == OK else None for seed, (status, r) in seeds.items()}
            delta = stats.paired_delta(mine, base)
            row.update(delta_mIoU=delta.mean, delta_ci95_low=delta.ci.low, delta_ci95_high=delta.ci.high,
                       pairs=delta.ci.n)
        rows.append(row)
    return rows
