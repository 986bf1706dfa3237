"""The claims table: each headline claim of the four papers against the profile's runs.

The claims are data (``configs/claims.yaml``: paper, table, text, the paper's numbers, metric,
direction and [method, reference] arms of recipe labels). For each arm pair, `claim_rows` takes the
runs of the first group holding both labels (the comparison, then the ablation groups: one group is
one schedule, so seed s of both arms saw one data stream), leaves out runs that diverged or
collapsed (`kdlab.pipeline.run_status`, counted), pairs the seeds and tests the paired difference
(`kdlab.stats`). Scores are in percent, as the papers print them. A row whose group's baseline is
not `MIN_TEACHER_GAP` points (or the claims file's ``min_teacher_gap``) below the teacher (issue 15)
reads `TEACHER_TOO_CLOSE`: that pair cannot test a distillation claim. `write_claims_table` trains
what is missing (cached runs otherwise) and writes ``claims.md`` / ``claims.csv``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdlab import stats
from kdlab.config import read_yaml
from kdlab.errors import ConfigError
from kdlab.paths import project_root
from kdlab.pipeline import (OK, Profile, ensure_ablations, ensure_comparison, ensure_teacher, read_results,
                            result_value, run_status)

NOT_RUN = "not run in this profile"
NOT_MEASURED = "not measured in these runs"
TEACHER_TOO_CLOSE = "teacher too close"
MIN_TEACHER_GAP = 8.0  # mIoU points the teacher must score above the converged baseline (issue 15)
_KEYS = {"id", "paper", "table", "text", "paper_numbers", "metric", "direction", "arms", "note"}
_REQUIRED = _KEYS - {"note"}

Runs = Mapping[tuple[str, int], Path]


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    table: str
    text: str
    paper_numbers: str
    metrics: tuple[str, ...]
    direction: str
    arms: tuple[tuple[str, str], ...]
    note: str = ""
    min_teacher_gap: float = MIN_TEACHER_GAP


def claims_path() -> Path:
    return project_root() / "configs" / "claims.yaml"


def load_claims(path: str | Path | None = None) -> list[Claim]:
    """The claims of ``path`` (default ``configs/claims.yaml``), checked; each carries the file's
    ``min_teacher_gap`` (default `MIN_TEACHER_GAP`)."""
    path = Path(path or claims_path())
    tree = read_yaml(path)
    entries = tree.get("claims")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: needs a non-empty 'claims' list")
    min_gap = tree.get("min_teacher_gap", MIN_TEACHER_GAP)
    if isinstance(min_gap, bool) or not isinstance(min_gap, (int, float)):
        raise ConfigError(f"{path}: min_teacher_gap must be a number of mIoU points, got {min_gap!r}")
    claims, ids = [], set()
    for index, entry in enumerate(entries):
        where = f"{path}: claims[{index}]"
        if not isinstance(entry, dict) or set(entry) - _KEYS or _REQUIRED - set(entry):
            raise ConfigError(f"{where}: needs the keys {sorted(_REQUIRED)} (and optionally 'note'), "
                              f"got {sorted(entry) if isinstance(entry, dict) else entry!r}")
        if entry["id"] in ids:
            raise ConfigError(f"{where}: id {entry['id']!r} appears twice")
        ids.add(entry["id"])
        if entry["direction"] not in stats.DIRECTIONS:
            raise ConfigError(f"{where}: direction must be one of {sorted(stats.DIRECTIONS)}, got {entry['direction']!r}")
        arms = entry["arms"]
        if not isinstance(arms, list) or not arms or not all(isinstance(a, list) and len(a) == 2 for a in arms):
            raise ConfigError(f"{where}: arms must be a list of [method, reference] pairs, got {arms!r}")
        metrics = entry["metric"] if isinstance(entry["metric"], list) else [entry["metric"]]
        claims.append(Claim(id=entry["id"], paper=entry["paper"], table=entry["table"], text=entry["text"],
                            paper_numbers=str(entry["paper_numbers"]), metrics=tuple(metrics),
                            direction=entry["direction"], arms=tuple((str(m), str(r)) for m, r in arms),
                            note=entry.get("note", ""), min_teacher_gap=float(min_gap)))
    return claims


def find_group(groups: Mapping[str, Runs], labels: Sequence[str]) -> tuple[str, Runs] | None:
    """The first group (in order) holding a run of every label, or None."""
    for name, runs in groups.items():
        present = {label for label, _seed in runs}
        if all(label in present for label in labels):
            return name, runs
    return None


@dataclass
class Arm:
    """One label's runs in one group: seed → score (None for a diverged or collapsed run)."""

    scores: dict[int, float | None]
    diverged: int
    collapsed: int

    @property
    def clean(self) -> list[float]:
        return [v for v in self.scores.values() if v is not None and math.isfinite(v)]

    @property
    def bad(self) -> int:
        return self.diverged + self.collapsed


def arm_scores(runs: Runs, label: str, metric: str) -> Arm:
    scores, counts = {}, {stats.DIVERGED: 0, "collapsed": 0}
    for (name, seed), run in runs.items():
        if name != label:
            continue
        status = run_status(run)
        if status != OK:
            counts[status] += 1
        scores[seed] = 100.0 * result_value(read_results(run), metric) if status == OK else None
    return Arm(scores, counts[stats.DIVERGED], counts["collapsed"])


def _mean_std(values: list[float]) -> str:
    if not values:
        return ""
    std = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{std}"


def arm_verdict(method: Arm, reference: Arm, delta: stats.PairedDelta, direction: str) -> str:
    """`kdlab.stats.verdict`, except ``diverged`` where at least half the runs of an arm diverged or
    collapsed, or where they leave fewer than two clean pairs; "not measured" where no clean run
    holds the metric."""
    for arm in (method, reference):
        if arm.bad and (2 * arm.bad >= len(arm.scores) or delta.ci.n < 2):
            return stats.DIVERGED
    if not method.clean or not reference.clean:
        return NOT_MEASURED
    return stats.verdict(delta, direction)


def teacher_score(teacher: Path | None) -> float:
    """The teacher run's final mIoU in percent; NaN without a teacher."""
    return math.nan if teacher is None else 100.0 * result_value(read_results(teacher), "mIoU")


def teacher_gap(teacher: float, runs: Runs) -> float:
    """Teacher mIoU minus the mean mIoU of the group's clean ``baseline`` runs (points); NaN where
    either is missing."""
    baseline = arm_scores(runs, "baseline", "mIoU").clean
    return teacher - statistics.fmean(baseline) if baseline else math.nan


def gated_verdict(paired: str, gap: float, min_gap: float) -> str:
    """`TEACHER_TOO_CLOSE` in place of a statistical verdict (supported, contradicted, inconclusive)
    where the teacher is less than ``min_gap`` points above the baseline; else ``paired`` (also where
    the gap is NaN: not measured). Diverged and not-measured rows keep their verdict: they state no
    test of the claim to begin with, and say what failed in the runs themselves."""
    statistical = paired in (stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE)
    return TEACHER_TOO_CLOSE if statistical and gap < min_gap else paired


def claim_rows(claims: Sequence[Claim], groups: Mapping[str, Runs], teacher: Path | None = None) -> list[dict]:
    """One row per claim, arm pair and metric: the paper's numbers, each arm's mean ± std over its
    clean seeds (percent), the paired Δ (method − reference) with its 95 % interval, the pairs, the
    runs that diverged or collapsed, teacher − baseline (`teacher_gap`, mIoU points, empty without
    a ``teacher`` run) and the verdict (`gated_verdict`: "teacher too close" where that gap is
    below the claim's ``min_teacher_gap``), with the statistical one (`arm_verdict`) kept as
    "paired verdict"; "not run in this profile" where no group holds both arms."""
    rows, teacher_miou = [], teacher_score(teacher)
    for claim in claims:
        for method, reference in claim.arms:
            for metric in claim.metrics:
                row = {"id": claim.id, "paper": claim.paper, "table": claim.table, "claim": claim.text,
                       "metric": metric, "method": method, "reference": reference,
                       "paper's numbers": claim.paper_numbers}
                found = find_group(groups, [method, reference])
                if found is None:
                    rows.append({**row, "runs": "", "method score": "", "reference score": "", "Δ": "",
                                 "CI95 low": "", "CI95 high": "", "pairs": 0, "diverged/collapsed": "",
                                 "teacher − baseline": "", "verdict": NOT_RUN, "paired verdict": "",
                                 "note": claim.note})
                    continue
                group, runs = found
                mine, theirs = arm_scores(runs, method, metric), arm_scores(runs, reference, metric)
                delta = stats.paired_delta(mine.scores, theirs.scores)
                paired = arm_verdict(mine, theirs, delta, claim.direction)
                gap = teacher_gap(teacher_miou, runs)
                rows.append({**row, "runs": group, "method score": _mean_std(mine.clean),
                             "reference score": _mean_std(theirs.clean), "Δ": delta.mean,
                             "CI95 low": delta.ci.low, "CI95 high": delta.ci.high, "pairs": delta.ci.n,
                             "diverged/collapsed": f"{mine.diverged}/{mine.collapsed} vs {theirs.diverged}/{theirs.collapsed}",
                             "teacher − baseline": gap if math.isfinite(gap) else "",
                             "verdict": gated_verdict(paired, gap, claim.min_teacher_gap), "paired verdict": paired,
                             "note": claim.note})
    return rows


def profile_groups(profile: Profile, progress: bool = True) -> dict[str, dict[tuple[str, int], Path]]:
    """The comparison, then every ablation group, as (label, seed) → run directory; trains what is
    missing (nothing, after notebooks 01 and 07)."""
    return {"comparison": ensure_comparison(profile, progress), **ensure_ablations(profile, progress)}


def write_claims_table(profile: Profile, claims: Sequence[Claim] | None = None,
                       progress: bool = True) -> tuple[list[dict], Path]:
    """`claim_rows` of the profile's runs against its teacher, written as ``claims.csv`` and
    ``claims.md`` in its figures directory; returns the rows and the Markdown file."""
    from kdlab.plots import write_table

    groups = profile_groups(profile, progress)
    rows = claim_rows(load_claims() if claims is None else claims, groups, ensure_teacher(profile, progress))
    _csv, markdown = write_table(rows, "claims", profile.figures_dir, float_fmt=".2f")
    return rows, markdown


def verdict_counts(rows: Sequence[Mapping]) -> dict[str, int]:
    """verdict → number of rows."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    return counts
