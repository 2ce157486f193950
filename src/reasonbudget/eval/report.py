"""Sweep reports: summary.json and summary.md (one row per task, method, budget) and PNG plots."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reasonbudget.eval.records import ResultsFile

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (pure)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, min(p, center - half)), min(1.0, max(p, center + half))  # rounding never excludes p


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value for two methods on the same items, from the discordant counts (items
    only A gets right, items only B gets right): under "equally accurate" each discordant item is a fair coin
    (pure)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank; pure."""
    order = sorted(range(len(values)), key=lambda k: values[k])
    ranks, i = [0.0] * len(values), 0
    while i < len(order):
        j = i
        while j < len(order) and values[order[j]] == values[order[i]]:
            j += 1
        for k in range(i, j):
            ranks[order[k]] = (i + j + 1) / 2
        i = j
    return ranks


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Probability that a random positive outscores a random negative (ties count half); pure."""
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    rank_sum = sum(r for r, y in zip(average_ranks(scores), labels) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's over average ranks, so ties are handled); NaN when either side
    is constant; pure."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} vs {len(y)} values")
    rx, ry = average_ranks(x), average_ranks(y)
    n = len(rx)
    if n < 2:
        return float("nan")
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["method"], r["budget"])].append(r)
    rows = []
    for (task, method, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        k, n = sum(bool(r.get("correct")) for r in rs), len(rs)
        lo, hi = wilson(k, n)
        u = [r["usage"] for r in rs]
        rows.append({
            "task": task, "method": method, "budget": budget, "n": n,
            "problems": len({r["problem_id"] for r in rs}), "seeds": len({r["seed"] for r in rs}),
            "accuracy": k / n, "ci_low": lo, "ci_high": hi,
            "mean_thinking_tokens": _mean([x["thinking_tokens"] for x in u]),
            "mean_total_tokens": _mean([x["completion_tokens"] for x in u]),
            "mean_wall_seconds": _mean([x["wall_seconds"] for x in u]),
            "mean_forward_passes": _mean([sum(x["forward_passes_by_model"].values()) for x in u]),
            "mean_energy_flops": _mean([x["energy_flops"] for x in u]),
        })
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| task | method | budget | n | accuracy | 95% CI | thinking tok | total tok | wall s | fwd passes "
            "| energy (GFLOP) |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['task']} | {r['method']} | {r['budget'] if r['budget'] is not None else '-'} | {r['n']} | "
        f"{r['accuracy']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['mean_thinking_tokens']:.1f} | "
        f"{r['mean_total_tokens']:.1f} | {r['mean_wall_seconds']:.2f} | {r['mean_forward_passes']:.1f} | "
        f"{r['mean_energy_flops'] / 1e9:.1f} |\n" for r in rows)
    return head + body


def write_report(out: Path) -> Path:
    from reasonbudget.eval.plots import plot_summary

    rows = summarize(list(ResultsFile(out / "results.jsonl").load().values()))
    summary = out / "summary.json"
    summary.write_text(json.dumps(rows, indent=2))
    (out / "summary.md").write_text(to_markdown(rows))
    if rows:
        plot_summary(rows, out)
    return summary
