"""The study's summary as a Markdown table, one row per configuration (the numbers come from verdict.summarize)."""

from __future__ import annotations

from trainer.collapse.verdict import Row

RATIO_DEVIATION = "losses/ratio_deviation_first_minibatch"
APPROX_KL = "losses/approx_kl"
MEANS = (RATIO_DEVIATION, APPROX_KL)  # the metrics the table averages


def summary_table(rows: list[Row], header: str) -> str:
    def pm(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.3f} ± {pair[1]:.3f}"

    lines = [header + " ± is the spread (sd) over seeds; vs fixed is the paired difference of finals ± its standard "
             "error; slow counts the seeds that reach 80% of their fixed pair's rise 1.5x later or never.", "",
             "| configuration | seeds | final return | peak return | steps to peak | collapsed | vs fixed | slow | "
             "first-minibatch ratio deviation | approx_kl | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.final is not None:
            cells = [pm(row.final), pm(row.peak), f"{row.peak_step:,.0f}", f"{row.collapsed}/{row.seeds - row.crashed}",
                     pm(row.vs_fixed) if row.vs_fixed else "", f"{row.slow}/{row.timed}" if row.timed else "",
                     f"{row.means[RATIO_DEVIATION]:.2g}", f"{row.means[APPROX_KL]:.2g}"]
        else:
            cells = ["-"] * 8
        lines.append(f"| {row.config} | {row.seeds} | " + " | ".join(cells) + f" | {row.verdict} |")
    for row in rows:
        if row.crashed:
            lines.append(f"\n{row.config}: {row.crashed} of {row.seeds} seeds crashed: " + "; ".join(row.errors))
    return "\n".join(lines) + "\n"
