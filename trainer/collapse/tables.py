"""The study's summary as a Markdown table, one row per configuration (the numbers come from verdict.summarize)."""

from __future__ import annotations

from trainer.collapse.verdict import Row

RATIO_DEVIATION = "losses/ratio_deviation_first_minibatch"
APPROX_KL = "losses/approx_kl"
MEANS = (RATIO_DEVIATION, APPROX_KL)  # the metrics the table averages


def pm(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def vs_fixed(row: Row) -> str:
    if row.vs_fixed is None:
        return ""
    usable = row.seeds - row.crashed - row.diverged
    return pm(row.vs_fixed) + (f" ({row.paired} of {usable} paired)" if row.paired < usable else "")


def summary_table(rows: list[Row], header: str) -> str:
    lines = [header + " ± is the spread (sd) over seeds; vs fixed is the paired difference of finals ± its standard "
             "error; slow counts the seeds that reach 80% of their fixed pair's rise more than 1.5x later (or never, "
             "ending near it). The rule: trainer/collapse/verdict.py.", "",
             "| configuration | seeds | final return | peak return | steps to peak | collapsed | vs fixed | slow | "
             "first-minibatch ratio deviation | approx_kl | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.final is not None:
            cells = [pm(row.final), pm(row.peak), f"{row.peak_step:,.0f}", f"{row.collapsed}/{row.seeds - row.crashed}",
                     vs_fixed(row), f"{row.slow}/{row.timed}" if row.timed else "",
                     f"{row.means[RATIO_DEVIATION]:.2g}", f"{row.means[APPROX_KL]:.2g}"]
        else:
            cells = ["-"] * 8
        lines.append(f"| {row.config} | {row.seeds} | " + " | ".join(cells) + f" | {row.verdict} |")
    for row in rows:
        if row.diverged:
            lines.append(f"\n{row.config}: {row.diverged} of {row.seeds} seeds diverged (a return that is not a number)")
        if row.crashed:
            lines.append(f"\n{row.config}: {row.crashed} of {row.seeds} seeds crashed: " + "; ".join(row.errors))
    return "\n".join(lines) + "\n"


def other_table(values: dict[str, dict[str, tuple[float, float]]]) -> str:
    """Final and peak of other curves per configuration (from verdict.other_curves)."""
    metrics = sorted({m for per in values.values() for m in per})
    if not metrics:
        return ""
    lines = ["Other curves, final / peak (means over seeds, the same windows as the return):", "",
             "| configuration | " + " | ".join(m.split("/")[-1] for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for config, per in values.items():
        cells = [f"{per[m][0]:.3g} / {per[m][1]:.3g}" if m in per else "-" for m in metrics]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
