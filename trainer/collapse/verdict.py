"""From a study's curves to numbers and verdicts: the one rule, written once (tests/test_collapse_study.py pins it).

Per seed, from its return curve (one point per update), with w = window x its number of points (at least 1):
    initial, final  the mean of its first, last w points
    peak            the best mean of w consecutive points, and the step at which that window ends
    collapsed       it rose at least min_rise above initial, then lost more than half of that rise by the end
    diverged        its return is not a finite number somewhere
Per configuration, paired by seed with fixed (the correct trainer; a pair needs both runs to reach 90% of the
same last step):
    vs fixed        final minus fixed's final: the mean over pairs and its standard error
    verdict         the first that holds:
        crashes               a seed crashed
        diverges              a seed diverged
        collapses             most seeds collapsed
        degrades / improves   vs fixed is at least min_rise below / above 0, and more than 2 standard errors
                              (which takes at least 2 pairs)
        slows                 most seeds reach 80% of their fixed pair's rise (initial to final) more than
                              1.5x later than that pair does, or never while ending within min_rise of it
                              (only where fixed rose min_rise)
        mixed                 some seed ends min_rise or more from its fixed pair, yet the mean is within
                              noise: the seeds disagree, and more of them are needed
        no measurable effect
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

RETURN = "episode/return"
Curves = dict[str, tuple[list[int], list[float]]]  # metric -> (steps, values), one point per update


@dataclass
class Seed:
    initial: float
    final: float
    peak: float
    peak_step: int
    collapsed: bool
    diverged: bool
    steps: list[int]
    smooth: list[float]  # the moving mean of w points, ending at steps[i]

    def reaches(self, level: float) -> int | None:
        """The first step at which the smoothed curve is at or above `level` (None: never)."""
        return next((s for s, v in zip(self.steps, self.smooth) if v >= level), None)


@dataclass
class Row:
    config: str
    seeds: int
    crashed: int = 0
    diverged: int = 0
    errors: list[str] = field(default_factory=list)
    final: tuple[float, float] | None = None  # mean and sd over seeds
    peak: tuple[float, float] | None = None
    peak_step: float | None = None
    collapsed: int = 0
    vs_fixed: tuple[float, float] | None = None  # paired mean difference and its standard error
    paired: int = 0  # seeds with a fixed run of the same seed and length
    slow: int = 0  # seeds that reach 80% of their fixed pair's rise 1.5x later, or never
    timed: int = 0  # seeds whose fixed pair rose enough to time
    far: int = 0  # seeds whose final is min_rise or more from their fixed pair's
    means: dict[str, float] = field(default_factory=dict)  # other metrics, averaged over every point of every seed
    verdict: str = ""


def seed_numbers(steps: list[int], values: list[float], window: float, min_rise: float) -> Seed | None:
    if not values:
        return None
    if not all(map(math.isfinite, values)):
        return Seed(math.nan, math.nan, math.nan, steps[-1], False, True, [], [])
    w = max(1, round(window * len(values)))
    smooth = [sum(values[i - w + 1:i + 1]) / w for i in range(w - 1, len(values))]
    best = max(range(len(smooth)), key=smooth.__getitem__)
    initial, final, peak = smooth[0], smooth[-1], smooth[best]
    rise = peak - initial
    return Seed(initial, final, peak, steps[best + w - 1], rise >= min_rise and final - initial < rise / 2, False,
                steps[w - 1:], smooth)


def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def summarize(curves: dict[tuple[str, int], Curves], errors: dict[tuple[str, int], str], configs: list[str],
              window: float, min_rise: float, means: tuple[str, ...] = ()) -> list[Row]:
    """One row per configuration. `curves` and `errors` are keyed by (configuration, seed); a run with an error
    crashed. `means` are other metrics to average per configuration."""
    numbers = {key: seed_numbers(*c.get(RETURN, ([], [])), window, min_rise) for key, c in curves.items()
               if key not in errors}
    rows = []
    for config in configs:
        seeds = sorted({s for c, s in [*curves, *errors] if c == config})
        row = Row(config, len(seeds), errors=sorted({errors[(config, s)] for s in seeds if (config, s) in errors}))
        row.crashed = sum((config, s) in errors for s in seeds)
        row.diverged = sum(bool(numbers.get((config, s)) and numbers[(config, s)].diverged) for s in seeds)
        ok = {s: numbers[(config, s)] for s in seeds if numbers.get((config, s)) and not numbers[(config, s)].diverged}
        if ok:
            row.final = mean_sd([n.final for n in ok.values()])
            row.peak = mean_sd([n.peak for n in ok.values()])
            row.peak_step = mean_sd([n.peak_step for n in ok.values()])[0]
            row.collapsed = sum(n.collapsed for n in ok.values())
            for metric in means:
                values = [v for s in ok for v in curves[(config, s)].get(metric, ([], []))[1]]
                row.means[metric] = sum(values) / len(values) if values else math.nan
            fixed = {s: numbers.get(("fixed", s)) for s in ok}
            pairs = {s: (n, fixed[s]) for s, n in ok.items() if fixed[s] and not fixed[s].diverged
                     and min(n.steps[-1], fixed[s].steps[-1]) >= 0.9 * max(n.steps[-1], fixed[s].steps[-1])}
            if pairs and config != "fixed":
                row.paired = len(pairs)
                diffs = [n.final - f.final for n, f in pairs.values()]
                m, sd = mean_sd(diffs)
                row.vs_fixed = (m, sd / math.sqrt(len(diffs)))
                row.far = sum(abs(d) >= min_rise for d in diffs)
                for n, f in pairs.values():
                    if f.final - f.initial >= min_rise:
                        level = f.initial + 0.8 * (f.final - f.initial)
                        mine, theirs = n.reaches(level), f.reaches(level)
                        row.timed += 1
                        near = abs(n.final - f.final) < min_rise  # one that never gets there and ends far is "far"
                        row.slow += (mine is None and near) or (mine is not None and theirs is not None
                                                                and mine > 1.5 * theirs)
        row.verdict = verdict(row, min_rise)
        rows.append(row)
    return rows


def verdict(row: Row, min_rise: float) -> str:
    """The rule of the module docstring, in its order."""
    if row.config == "fixed":
        return "reference"
    if row.crashed:
        return "crashes"
    if row.diverged:
        return "diverges"
    if row.final is None:
        return "no data"
    if row.collapsed * 2 > row.seeds - row.crashed - row.diverged:
        return "collapses"
    if row.vs_fixed is None:
        return "no fixed runs to compare with"
    m, se = row.vs_fixed
    if row.paired >= 2 and abs(m) >= min_rise and abs(m) > 2 * se:
        return "degrades" if m < 0 else "improves"
    if row.timed and row.slow * 2 > row.timed:
        return "slows"
    if row.far:
        return "mixed"
    return "no measurable effect"


def other_curves(curves: dict[tuple[str, int], Curves], configs: list[str], metrics: tuple[str, ...],
                 window: float) -> dict[str, dict[str, tuple[float, float]]]:
    """For each configuration and metric: the final and the peak (as for the return) averaged over seeds; a rise
    and fall shows here in what the agents gathered even where the return does not fall."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for config in configs:
        for metric in metrics:
            seeds = [seed_numbers(*c[metric], window, 0.0) for (name, _), c in curves.items()
                     if name == config and c.get(metric, ([], []))[1]]
            seeds = [n for n in seeds if n and not n.diverged]
            if seeds:
                out.setdefault(config, {})[metric] = (mean_sd([n.final for n in seeds])[0],
                                                      mean_sd([n.peak for n in seeds])[0])
    return out


def largest_jump(curves: Curves) -> tuple[str, float, float, int] | None:
    """The largest rise of a part's weight norm in one update, as (part, before, after, step), over the
    `weights/<part>_norm` curves of one run (None if it logged none)."""
    jumps = [(values[i] / values[i - 1], tag.split("/")[1].removesuffix("_norm"), values[i - 1], values[i], steps[i])
             for tag, (steps, values) in curves.items() if tag.startswith("weights/") for i in range(1, len(values))
             if values[i - 1] > 0]
    return max(jumps)[1:] if jumps else None
