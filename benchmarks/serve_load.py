"""Load test of the OpenAI-compatible server: concurrent requests with mixed thinking budgets against the
same requests sent one at a time, in one run on one server.

Checks that no request is lost (every one answered 200 with an answer) and none thinks over its budget;
reports p50/p95 latency and aggregate completion tokens/s of both modes and their ratio.

    python benchmarks/serve_load.py [--quick] [--json] [--requests 64] [--plot docs/serve_load.png]
                                    [--url http://HOST:PORT/v1 --model M] [--no-late]

Late arrivals (continuous batching): 8 long requests (1024 thinking tokens) start, 8 short ones (budget 16)
arrive 2 s later; the short ones' p50/p95 latency against the same short requests on the idle server.

Without --url it serves the embedded model in-process on loopback. GSM8K test questions, greedy decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BUDGETS = (16, 32, 64, 128)
ANSWER_ROOM = 48


def requests_for(n: int, model: str) -> list[dict[str, Any]]:
    from reasonbudget.tasks import get_task

    questions = [p.question for p in get_task("gsm8k").problems(n)]
    return [{"model": model, "messages": [{"role": "user", "content": q}], "temperature": 0,
             "thinking_token_budget": BUDGETS[i % len(BUDGETS)], "max_tokens": BUDGETS[i % len(BUDGETS)] + ANSWER_ROOM}
            for i, q in enumerate(questions)]


async def _send(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        r = await client.post(url, json=body)
        data = r.json()
    except (httpx.HTTPError, ValueError) as e:
        return {"status": None, "error": f"{type(e).__name__}: {e}", "latency": time.perf_counter() - t0}
    out = {"status": r.status_code, "latency": time.perf_counter() - t0, "budget": body["thinking_token_budget"]}
    if r.status_code == 200:
        usage = data["reasonbudget"]["usage"]
        out.update(thinking=usage["thinking_tokens"], completion=data["usage"]["completion_tokens"],
                   answered=bool(data["choices"][0]["message"]["content"]))
    else:
        out["error"] = data.get("error", {}).get("message")
    return out


async def concurrent(url: str, bodies: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    async with httpx.AsyncClient(timeout=3600) as client:
        t0 = time.perf_counter()
        replies = await asyncio.gather(*(_send(client, url, b) for b in bodies))
        return list(replies), time.perf_counter() - t0


async def one_at_a_time(url: str, bodies: list[dict[str, Any]], progress: bool) -> tuple[list[dict[str, Any]], float]:
    from tqdm import tqdm

    async with httpx.AsyncClient(timeout=3600) as client:
        t0 = time.perf_counter()
        replies = [await _send(client, url, b) for b in tqdm(bodies, desc="one at a time", disable=not progress)]
        return replies, time.perf_counter() - t0


def summarize(mode: str, replies: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """One mode's row (per-request latencies and budgets kept for the plot)."""
    ok = [r for r in replies if r["status"] == 200]
    lat = sorted(r["latency"] for r in replies)
    tokens = sum(r["completion"] for r in ok)
    return {"mode": mode, "requests": len(replies), "ok": len(ok),
            "lost": len(replies) - len([r for r in ok if r["answered"]]),
            "over_budget": sum(r["thinking"] > r["budget"] for r in ok),
            "p50_latency_s": statistics.median(lat), "p95_latency_s": lat[max(int(0.95 * len(lat)) - 1, 0)],
            "wall_s": wall, "completion_tokens": tokens, "tokens_per_s": tokens / wall if wall else 0.0,
            "errors": sorted({r.get("error") for r in replies if r["status"] != 200} - {None})[:5],
            "latencies_s": [round(r["latency"], 3) for r in replies], "budgets": [r.get("budget") for r in replies]}


LATE_LONG, LATE_SHORT, LATE_DELAY_S = 1024, 16, 2.0


async def late_arrivals(url: str, model: str, k: int = 8) -> dict[str, Any]:
    """k long requests start; k short ones arrive LATE_DELAY_S later. Then the same short ones alone."""
    bodies = requests_for(2 * k, model)
    long_bodies = [{**b, "thinking_token_budget": LATE_LONG, "max_tokens": LATE_LONG + ANSWER_ROOM} for b in bodies[:k]]
    short_bodies = [{**b, "thinking_token_budget": LATE_SHORT, "max_tokens": LATE_SHORT + ANSWER_ROOM}
                    for b in bodies[k:]]
    async with httpx.AsyncClient(timeout=3600) as client:
        longs = [asyncio.create_task(_send(client, url, b)) for b in long_bodies]
        await asyncio.sleep(LATE_DELAY_S)
        shorts = await asyncio.gather(*(_send(client, url, b) for b in short_bodies))
        long_replies = await asyncio.gather(*longs)
        idle = await asyncio.gather(*(_send(client, url, b) for b in short_bodies))

    def pct(replies, q):
        lat = sorted(r["latency"] for r in replies)
        return lat[max(int(q * len(lat)) - 1, 0)] if q < 1 else lat[-1]

    out = {"long_requests": k, "short_requests": k, "delay_s": LATE_DELAY_S,
           "short_p50_s": statistics.median(r["latency"] for r in shorts), "short_p95_s": pct(shorts, 0.95),
           "idle_p50_s": statistics.median(r["latency"] for r in idle), "idle_p95_s": pct(idle, 0.95),
           "long_p50_s": statistics.median(r["latency"] for r in long_replies),
           "lost": sum(r["status"] != 200 or not r.get("answered") for r in [*shorts, *long_replies]),
           "over_budget": sum(r.get("thinking", 0) > r["budget"] for r in [*shorts, *long_replies] if r["status"] == 200)}
    out["p50_ratio"] = out["short_p50_s"] / out["idle_p50_s"]
    out["p95_ratio"] = out["short_p95_s"] / out["idle_p95_s"]
    return out


def run(url: str, model: str, n: int, progress: bool, late: bool = True) -> dict[str, Any]:
    bodies = requests_for(n, model)
    endpoint = url.rstrip("/") + "/chat/completions"
    asyncio.run(concurrent(endpoint, bodies[:1]))  # warm-up (weights, caches)
    conc = summarize("concurrent", *asyncio.run(concurrent(endpoint, bodies)))
    seq = summarize("one at a time", *asyncio.run(one_at_a_time(endpoint, bodies, progress)))
    report = {"model": model, "budgets": list(BUDGETS), "rows": [conc, seq],
              "throughput_ratio": conc["tokens_per_s"] / seq["tokens_per_s"] if seq["tokens_per_s"] else None}
    if late:
        report["late_arrivals"] = asyncio.run(late_arrivals(endpoint, model))
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency CDF of both modes, and concurrent latency per thinking budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for row in report["rows"]:
        lat = sorted(row["latencies_s"])
        ax.step(lat, [(i + 1) / len(lat) for i in range(len(lat))], where="post",
                label=f"{row['mode']} ({row['tokens_per_s']:.0f} tok/s)")
    ax.set(xlabel="latency (s)", ylabel="share of requests answered", title="latency CDF")
    ax.legend()
    conc = report["rows"][0]
    bx.scatter(conc["budgets"], conc["latencies_s"], alpha=0.6)
    bx.set(xlabel="thinking budget (tokens)", ylabel="latency (s)", title="concurrent: latency by budget")
    fig.suptitle(f"{report['model']}: {conc['requests']} requests, mixed budgets")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def print_table(report: dict[str, Any]) -> None:
    cols = ["mode", "requests", "ok", "lost", "over_budget", "p50_latency_s", "p95_latency_s", "wall_s",
            "completion_tokens", "tokens_per_s"]
    print(" | ".join(cols))
    for row in report["rows"]:
        print(" | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols))
    print(f"aggregate throughput, concurrent / one at a time: {report['throughput_ratio']:.2f}x "
          f"(model {report['model']}, budgets {report['budgets']} cycled)")
    if "late_arrivals" in report:
        la = report["late_arrivals"]
        print(f"late arrivals: {la['short_requests']} short requests (budget {LATE_SHORT}) {la['delay_s']} s after "
              f"{la['long_requests']} long ones (budget {LATE_LONG}): p50 {la['short_p50_s']:.2f} s, p95 "
              f"{la['short_p95_s']:.2f} s; on the idle server p50 {la['idle_p50_s']:.2f} s, p95 {la['idle_p95_s']:.2f} s "
              f"(ratios {la['p50_ratio']:.2f}x / {la['p95_ratio']:.2f}x; lost {la['lost']}, over budget "
              f"{la['over_budget']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 requests instead of 64")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print the JSON document only")
    ap.add_argument("--out", default="runs/serve_load.json", help="where the JSON report is written")
    ap.add_argument("--url", help="an already running server (default: serve the embedded model here)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--plot", help="write a latency plot here (e.g. docs/serve_load.png)")
    ap.add_argument("--no-late", action="store_true", help="skip the late-arrival case")
    args = ap.parse_args()
    n = args.requests or (16 if args.quick else 64)
    if n < 1:
        sys.exit("error: --requests must be >= 1")
    if args.url:
        report = run(args.url, args.model, n, not args.json, late=not args.no_late)
    else:
        from reasonbudget.models import load_model
        from reasonbudget.serve.app import create_app
        from reasonbudget.serve.background import serving

        app = create_app(load_model(args.model))
        with serving(app) as url:
            report = run(url, args.model, n, not args.json, late=not args.no_late)
            report["engine_batches"] = app.state.scheduler.batches
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(report, Path(args.plot))
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
        print(f"engine batches: {report.get('engine_batches', 'n/a')}; report: {out}")


if __name__ == "__main__":
    main()
