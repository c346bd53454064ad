"""The study's figures (matplotlib, the plots extra):

    returns_figure   one panel per configuration: its return (mean and min-max over seeds) against fixed's
    metrics_figure   one panel per metric (return, entropy, KL, value loss, gradient norm, weight norms, LSTM |c|, ...):
                     every seed of every configuration, to see what the training did around a rise or a fall
"""

from __future__ import annotations

import math

from trainer.collapse.verdict import RETURN, Curves, Row

METRICS = (RETURN, "episode/ore_red_gained", "episode/battery_red_gained", "episode/heart_gained",
           "losses/entropy", "losses/approx_kl", "losses/value_loss", "losses/grad_norm", "losses/clipfrac",
           "losses/explained_variance", "memory/cell_abs_mean", "weights/encoder_norm", "weights/memory_norm",
           "weights/critic_norm", "weights/actor_norm")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError('the figures need matplotlib: pip install -e ".[plots]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    return plt, matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k")


def returns_figure(path: str, title: str, curves: dict[tuple[str, int], Curves], rows: list[Row]) -> None:
    import numpy as np

    plt, steps_format = _pyplot()

    def band(config: str, seeds: set[int]):
        runs = [c[RETURN] for (name, seed), c in curves.items()
                if name == config and seed in seeds and c.get(RETURN, ([], []))[1]]
        if not runs:
            return None
        grid = np.array(max((steps for steps, _ in runs), key=len), dtype=float)
        ys = np.array([np.interp(grid, steps, values, right=np.nan) for steps, values in runs])
        return grid, np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)

    others = [row for row in rows if row.config != "fixed"] or rows
    cols = min(4, len(others))
    height = math.ceil(len(others) / cols)
    fig, axes = plt.subplots(height, cols, figsize=(4 * cols, 3 * height), sharex=True, sharey=True, squeeze=False)
    for ax, row in zip(axes.flat, others):
        seeds = {seed for name, seed in curves if name == row.config}  # fixed on the same seeds: the paired runs
        for config, color in dict.fromkeys([("fixed", "gray"), (row.config, "tab:red")]):
            found = band(config, seeds)
            if found is not None:
                steps, mean, low, high = found
                ax.plot(steps, mean, color=color, label=config)
                ax.fill_between(steps, low, high, color=color, alpha=0.2)
        ax.set_title(f"{row.config}: {row.verdict} ({len(seeds)} seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes.flat[len(others):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("agent steps")
        ax.xaxis.set_major_formatter(steps_format)
    for ax in axes[:, 0]:
        ax.set_ylabel("episode return")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def metrics_figure(path: str, title: str, curves: dict[tuple[str, int], Curves], smooth: int = 1) -> None:
    """Each seed is a line in its configuration's colour (seed 0 solid, then dashed, dotted...); values are
    moving means of `smooth` updates."""
    plt, steps_format = _pyplot()
    metrics = [m for m in METRICS if any(m in c for c in curves.values())]
    configs = list(dict.fromkeys(config for config, _ in curves))
    colors = {config: f"C{i}" for i, config in enumerate(configs)}
    cols = 3
    height = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(height, cols, figsize=(5 * cols, 2.8 * height), sharex=True, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for (config, seed), c in curves.items():
            steps, values = c.get(metric, ([], []))
            if len(values) >= smooth:
                means = [sum(values[i - smooth + 1:i + 1]) / smooth for i in range(smooth - 1, len(values))]
                ax.plot(steps[smooth - 1:], means, color=colors[config], linewidth=1,
                        linestyle=("-", "--", ":", "-.")[seed % 4], label=f"{config} seed {seed}")
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("agent steps")
        ax.xaxis.set_major_formatter(steps_format)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(title + (f" (moving mean of {smooth} updates)" if smooth > 1 else ""), fontsize=11)
    fig.tight_layout(rect=(0, 0.03 + 0.02 * math.ceil(len(labels) / 4), 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
