"""Accuracy vs cost plots (matplotlib, headless): one line per method, 95% CI error bars."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

PLOTS = {"accuracy_vs_thinking_tokens.png": ("mean_thinking_tokens", "mean thinking tokens per problem"),
         "accuracy_vs_wall_seconds.png": ("mean_wall_seconds", "mean wall seconds per problem")}


def plot_summary(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_method[(r["task"], r["method"])].append(r)
    paths = []
    for filename, (x_key, x_label) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
        for (task, method), rs in sorted(by_method.items()):
            rs = sorted(rs, key=lambda r: r[x_key])
            xs, ys = [r[x_key] for r in rs], [r["accuracy"] for r in rs]
            err = [[max(0.0, y - r["ci_low"]) for y, r in zip(ys, rs)],
                   [max(0.0, r["ci_high"] - y) for y, r in zip(ys, rs)]]
            label = method if len({t for t, _ in by_method}) == 1 else f"{task} {method}"
            line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
            for x, y, r in zip(xs, ys, rs):
                if r["budget"] is not None:
                    ax.annotate(str(r["budget"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                color=line[0].get_color())
        positive = [r[x_key] for r in rows if r[x_key] > 0]
        if positive and max(positive) > 20 * min(positive):  # budgets span decades: keep small ones readable
            ax.set_xscale("symlog", linthresh=max(min(positive), 1e-3))
        ax.set_xlabel(x_label)
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"{', '.join(sorted({t for t, _ in by_method}))}: accuracy vs {x_label.split(' per')[0]}")
        fig.tight_layout()
        fig.savefig(out / filename)
        plt.close(fig)
        paths.append(out / filename)
    return paths
