"""Token-level draft/target decoding against target-only decoding, measured side by side in one process.

For each pair (the testbed pair; the Qwen2.5-Coder pair in the combinations worth measuring when `make
real-models` has fetched it) and each batch size and temperature: target-only (`plain`), speculative decoding
and MTAD on the same problems (GSM8K test for the Qwen pair, testbed d=6 for the testbed pair), thinking and
answer under the same caps. Reported per row: tok/s (generated tokens / wall seconds), speed-up over the
target-only run of the same pair, batch and temperature, acceptance (kept / drafted tokens), block efficiency
(tokens per target forward), acceptance per block position, the energy proxy (2 x parameters x tokens
processed, both models), accuracy, and the speed-up the formula predicts from the measured acceptance and
step-cost ratio c (`engine.verify.expected_speedup`). Greedy speculative decoding must reproduce the target's
tokens: the script counts the problems where it does not.

    python benchmarks/speculative.py [--quick] [--json] [--problems 50] [--batches 1,8] [--gamma 4]
        [--methods speculative,mtad] [--out FILE] [--resume JOURNAL]

Methods take turns batch by batch on the same problems (target-only, then each draft/target method), so each
paired speed-up is measured within seconds; `--resume` journals every finished batch group, so a 50-problem run
(hours on a CPU) can be stopped and continued.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

METHODS = ("speculative", "mtad")  # measured against target-only, which always runs
QWEN_PAIRS = (  # (draft, draft weights, target, target weights)
    ("qwen2.5-coder-0.5b", "none", "qwen2.5-coder-1.5b", "none"),
    ("qwen2.5-coder-0.5b", "int4", "qwen2.5-coder-1.5b", "none"),
    ("qwen2.5-coder-1.5b", "int4", "qwen2.5-coder-1.5b", "none"),
)


def step_ms(model, prompt, reps: int = 10) -> float:
    """Median milliseconds of one decode-step forward (one token, one row) after `prompt`."""
    cache = model.backend.new_cache(1, len(prompt) + 2)
    rows = torch.tensor([0])
    with torch.inference_mode():
        model.backend(torch.tensor([list(prompt)]), cache, rows)
        cache.lengths[0] = len(prompt)
        tok = torch.tensor([[prompt[-1]]])
        times = []
        for _ in range(reps + 1):
            t = time.perf_counter()
            model.backend(tok, cache, rows, logits_at=torch.tensor([0]))
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[1:])


def compact(result) -> dict:
    """What a row needs of one generation, small enough to journal: tokens, answer and the speculation counts."""
    sp = result.trace.get("speculation") or {}
    return {"tokens": [int(t) for t in result.tokens], "answer": result.answer,
            "drafted": result.usage.drafted_tokens, "accepted": result.usage.accepted_tokens,
            "target_passes": next(iter(result.usage.forward_passes_by_model.values()), 0),
            "energy": result.usage.energy_flops, "position_drafted": list(sp.get("position_drafted", [])),
            "position_accepted": list(sp.get("position_accepted", []))}


def run_batch(engine, spec: str, prompts, start: int, temperature: float, seed: int = 0) -> tuple[list[dict], float]:
    """One batch of problems (`prompts`, the first at index `start`) under one method -> (compact results, seconds)."""
    from reasonbudget.engine import SamplingConfig
    from reasonbudget.methods import make_method

    method = make_method(spec, SamplingConfig(temperature=temperature))
    gens = [torch.Generator().manual_seed(seed + start + k) for k in range(len(prompts))]
    t0 = time.perf_counter()
    out = method.run(engine, prompts, budget=None, generator=gens)
    return [compact(r) for r in out], time.perf_counter() - t0


def summarize(results: list[dict], batch_seconds: list[float], batch: int, grade) -> dict:
    """One method's row from its compact results; `batch_seconds`: the wall time of each batch of `batch` problems."""
    from reasonbudget.eval.stats import bootstrap_interval

    seconds = sum(batch_seconds)
    tokens = sum(len(r["tokens"]) for r in results)
    drafted = sum(r["drafted"] for r in results)
    accepted = sum(r["accepted"] for r in results)
    target_passes = sum(r["target_passes"] for r in results)
    pos_d: list[int] = []
    pos_a: list[int] = []
    for r in results:
        for k, (d, a) in enumerate(zip(r["position_drafted"], r["position_accepted"])):
            if k >= len(pos_d):
                pos_d.append(0)
                pos_a.append(0)
            pos_d[k] += d
            pos_a[k] += a
    correct = {str(i): [bool(grade(i, r))] for i, r in enumerate(results)}
    acc_lo, acc_hi = bootstrap_interval(correct)
    return {"tok_s": round(tokens / seconds, 2), "tokens": tokens, "seconds": round(seconds, 2),
            "batch_seconds": [round(x, 3) for x in batch_seconds],
            "batch_tokens": [sum(len(r["tokens"]) for r in results[i : i + batch])
                             for i in range(0, len(results), batch)],
            "accuracy_ci": [round(acc_lo, 4), round(acc_hi, 4)],
            "acceptance": round(accepted / drafted, 4) if drafted else None,
            "block_efficiency": round(tokens / max(1, target_passes), 3),
            "position_acceptance": [round(a / d, 3) for a, d in zip(pos_a, pos_d) if d],
            "energy_proxy": sum(r["energy"] for r in results),
            "accuracy": round(sum(v[0] for v in correct.values()) / len(results), 4)}


class Journal:
    """Finished batch groups (every method on one batch of problems), one JSON line each, so that a run stopped
    early resumes where it stopped. A group is written whole: its paired timings were measured back to back."""

    def __init__(self, path: str | None):
        from reasonbudget.eval.records import JsonLines

        self.file = JsonLines(path) if path else None  # a line torn by a kill is dropped: its group runs again
        self.groups = {r["key"]: r for r in self.file.read(valid=lambda r: r["key"])} if self.file else {}

    def get(self, key: str) -> dict | None:
        return self.groups.get(key)

    def add(self, key: str, record: dict) -> None:
        record = {"key": key, **record}
        self.groups[key] = record
        if self.file:
            self.file.append([record])


def machine() -> str:
    """The CPU (or GPU) a group ran on, journaled beside its timings."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "cpu")
    except OSError:
        name = "cpu"
    return f"{name}, {torch.get_num_threads()} threads"


def measure_pair(pair, problems, batches, temperatures, gamma: int, dtype: str,
                 methods: tuple[str, ...] = METHODS, journal: Journal | None = None) -> list[dict]:
    """Rows for one pair. Methods take turns batch by batch (target-only, then each method, on the same problems),
    so that a drift in the machine's speed touches every method alike and each paired ratio is measured within
    seconds; with a journal, finished batch groups are kept and a rerun skips them."""
    from reasonbudget.engine import Engine
    from reasonbudget.engine.verify import expected_speedup
    from reasonbudget.eval.stats import rate_ratio_interval
    from reasonbudget.models import load_model

    journal = journal or Journal(None)
    draft_name, draft_quant, target_name, target_quant, task, items = pair["draft"], pair["draft_quant"], \
        pair["target"], pair["target_quant"], pair["task"], problems
    target = load_model(target_name, dtype=dtype, quant=target_quant)
    engine = Engine(target)
    prompts = [task.prompt(target, p) for p in items]
    draft = engine.speculation(draft_name, gamma, draft_quant).draft.model
    c_key = f"{draft_name}:{draft_quant}>{target_name}:{target_quant} {dtype} step-cost ratio"
    c_now = step_ms(draft, prompts[0]) / step_ms(target, prompts[0])  # also warms both models up, resumed or not
    if journal.get(c_key) is None:  # kept with the timings it explains
        journal.add(c_key, {"machine": machine(), "c": c_now})
    c = journal.get(c_key)["c"]

    def grade(i, r):
        from reasonbudget.tasks import grade_many

        return grade_many([(r["answer"], items[i].gold, task.grader)])[0]

    rows = []
    dq = f",draft_quant={draft_quant}" if draft_quant != "none" else ""
    specs = {"target-only": "plain", **{name: f"{name}:draft={draft_name},gamma={gamma}{dq}" for name in methods}}
    for batch in batches:
        for temperature in temperatures:
            results = {name: [] for name in specs}
            seconds = {name: [] for name in specs}
            resumed, machines = 0, set()
            for start in range(0, len(prompts), batch):
                key = (f"{draft_name}:{draft_quant}>{target_name}:{target_quant} {dtype} gamma={gamma} b={batch} "
                       f"T={temperature:g} problems={start}-{min(start + batch, len(prompts)) - 1}")
                group = journal.get(key)
                if group is None or not all(name in group["methods"] for name in specs):
                    group = {"machine": machine(), "methods": {}}
                    for name, spec in specs.items():
                        res, secs = run_batch(engine, spec, prompts[start : start + batch], start, temperature)
                        group["methods"][name] = {"seconds": secs, "results": res}
                    journal.add(key, group)
                else:
                    resumed += 1
                machines.add(group["machine"])
                for name in specs:
                    results[name] += group["methods"][name]["results"]
                    seconds[name].append(group["methods"][name]["seconds"])
            if resumed:
                print(f"  b={batch} T={temperature}: {resumed} batch groups from the journal", file=sys.stderr)
            if len(machines) > 1:  # each group's pair is still timed side by side, on one machine
                print(f"  b={batch} T={temperature}: batch groups timed on {len(machines)} machines: "
                      + "; ".join(sorted(machines)), file=sys.stderr)
            base = summarize(results["target-only"], seconds["target-only"], batch, grade)
            print(f"  target-only {target_name} b={batch} T={temperature}: {base['tok_s']} tok/s", file=sys.stderr)
            rows.append({"method": "target-only", "draft": None, "target": f"{target_name} {target_quant}",
                         "batch": batch, "temperature": temperature, "speedup_vs_target": 1.0, **base,
                         "machines": sorted(machines)})
            speculative = None
            for name in methods:
                s = summarize(results[name], seconds[name], batch, grade)
                # tok/s over target-only's, with an interval that resamples the batches (the same problems)
                ratio, lo, hi = rate_ratio_interval(s["batch_tokens"], s["batch_seconds"], base["batch_tokens"],
                                                    base["batch_seconds"])
                row = {"method": name, "draft": f"{draft_name} {draft_quant}", "target": f"{target_name} {target_quant}",
                       "batch": batch, "temperature": temperature, "c": round(c, 3),
                       "speedup_vs_target": round(ratio, 3), "speedup_ci": [round(lo, 3), round(hi, 3)], **s,
                       "machines": sorted(machines)}
                if s["acceptance"] is not None:
                    row["predicted_speedup"] = round(expected_speedup(s["acceptance"], gamma, c), 3)
                if name == "speculative":
                    speculative = s
                    if temperature == 0:
                        row["greedy_mismatches"] = sum(a["tokens"] != b["tokens"] for a, b in
                                                       zip(results[name], results["target-only"]))
                elif speculative is not None:  # MTAD's goal is stated against speculative decoding
                    ratio, lo, hi = rate_ratio_interval(s["batch_tokens"], s["batch_seconds"],
                                                        speculative["batch_tokens"], speculative["batch_seconds"])
                    row["speedup_vs_speculative"] = round(ratio, 3)
                    row["speedup_vs_speculative_ci"] = [round(lo, 3), round(hi, 3)]
                    row["energy_vs_speculative"] = round(s["energy_proxy"] / speculative["energy_proxy"], 3)
                rows.append(row)
                print(f"  {name} {draft_name} {draft_quant} b={batch} T={temperature}: {s['tok_s']} tok/s "
                      f"({row['speedup_vs_target']}x)", file=sys.stderr)
    return rows


def parse_pairs(text: str) -> tuple[tuple[str, ...], ...]:
    """'D:DQ>T:TQ,...' -> ((D, DQ, T, TQ), ...); empty when any item is malformed."""
    pairs = []
    for item in text.split(","):
        draft, _, target = item.partition(">")
        parts = (*draft.split(":"), *target.split(":"))
        if len(parts) != 4 or not all(parts):
            return ()
        pairs.append(parts)
    return tuple(pairs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 problems, batch 1, the testbed pair and one Qwen pair")
    ap.add_argument("--problems", type=int, default=50)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--temperatures", default="0,1")
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--pairs", default="", help="Qwen pairs to run, as DRAFT:QUANT>TARGET:QUANT, comma-separated "
                    "(default: all: " + ", ".join(f"{d}:{dq}>{t}:{tq}" for d, dq, t, tq in QWEN_PAIRS) + "); "
                    "'testbed': the testbed pair alone")
    ap.add_argument("--dtype", default="auto", help="the Qwen models' dtype: bfloat16 | float32 | auto (bfloat16 where "
                    "its matmuls are native: a GPU or an AVX-512 CPU; else float32)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="draft/target methods to measure against target-only, comma-separated (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--resume", metavar="JOURNAL", help="a JSON-lines journal of finished batch groups: a rerun "
                    "with the same settings skips them (each group's paired timings were measured back to back)")
    args = ap.parse_args(argv)
    qwen_pairs = QWEN_PAIRS[:1] if args.quick else QWEN_PAIRS
    if args.pairs == "testbed":
        qwen_pairs = ()
    elif args.pairs:
        qwen_pairs = parse_pairs(args.pairs)
        if not qwen_pairs:
            ap.error(f"--pairs {args.pairs!r}: expected DRAFT:QUANT>TARGET:QUANT[,...], "
                     "e.g. qwen2.5-coder-0.5b:int4>qwen2.5-coder-1.5b:none")
    methods = tuple(m for m in args.methods.split(",") if m)
    if not methods or any(m not in METHODS for m in methods):
        ap.error(f"--methods {args.methods!r}: expected a comma-separated subset of {','.join(METHODS)}")
    torch.set_num_threads(args.threads)

    from reasonbudget.models.registry import REGISTRY, resolve_dtype

    args.dtype = resolve_dtype(args.dtype)
    from reasonbudget.tasks import get_task

    n = 10 if args.quick else args.problems
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    temperatures = [float(t) for t in args.temperatures.split(",")]
    testbed = get_task("testbed:d=6")
    pairs = [{"draft": "testbed-draft", "draft_quant": "none", "target": "testbed-target", "target_quant": "none",
              "task": testbed, "problems": testbed.problems(n), "dtype": "float32"}]
    if REGISTRY["qwen2.5-coder-1.5b"].locate() is not None and REGISTRY["qwen2.5-coder-0.5b"].locate() is not None:
        gsm8k = get_task("gsm8k")
        for d, dq, t, tq in qwen_pairs:
            pairs.append({"draft": d, "draft_quant": dq, "target": t, "target_quant": tq, "task": gsm8k,
                          "problems": gsm8k.problems(n), "dtype": args.dtype})
    journal = Journal(args.resume)
    rows = []
    report = {"rows": rows, "settings": {"problems": n, "gamma": args.gamma, "threads": args.threads,
                                         "dtype_qwen": args.dtype, "quick": args.quick,
                                         "methods": list(methods)}}
    for pair in pairs:
        rows += measure_pair(pair, pair["problems"], batches, temperatures, args.gamma, pair["dtype"], methods,
                             journal)
        if args.out:  # after every pair, so that a long run stopped early keeps what it measured
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)
    if args.json:
        print(json.dumps(report))
        return
    print(f"Qwen models in {args.dtype}; intervals: 95% bootstrap over the {n} problems (speed-up: paired batches)")
    print(f"{'method':12s} {'draft':26s} {'target':26s} {'b':>2s} {'T':>3s} {'tok/s':>7s} {'speedup':>7s} "
          f"{'95% CI':>13s} {'pred':>5s} {'accept':>6s} {'block':>5s} {'acc':>5s} {'95% CI':>12s}")
    unclear = []
    for r in rows:
        pred = f"{r['predicted_speedup']:.2f}" if "predicted_speedup" in r else "-"
        acc = f"{r['acceptance']:.2f}" if r.get("acceptance") is not None else "-"
        ci = f"[{r['speedup_ci'][0]:.2f}, {r['speedup_ci'][1]:.2f}]" if "speedup_ci" in r else ""
        print(f"{r['method']:12s} {str(r['draft']):26s} {r['target']:26s} {r['batch']:2d} {r['temperature']:3.1f} "
              f"{r['tok_s']:7.1f} {r['speedup_vs_target']:7.2f} {ci:>13s} {pred:>5s} {acc:>6s} "
              f"{r['block_efficiency']:5.2f} {r['accuracy']:5.2f} [{r['accuracy_ci'][0]:.2f}, {r['accuracy_ci'][1]:.2f}]")
        if "speedup_ci" in r and r["speedup_ci"][0] <= 1.0 <= r["speedup_ci"][1]:
            unclear.append(f"{r['method']} ({r['target']}, b={r['batch']}, T={r['temperature']:g})")
    for r in rows:
        if "speedup_vs_speculative" in r:
            lo, hi = r["speedup_vs_speculative_ci"]
            print(f"{r['method']} over speculative ({r['draft']} > {r['target']}, b={r['batch']}, "
                  f"T={r['temperature']:g}): {r['speedup_vs_speculative']:.2f}x [{lo:.2f}, {hi:.2f}], "
                  f"energy proxy {r['energy_vs_speculative']:.2f}x")
    if unclear:
        print("cannot tell apart from target-only at this size (the interval holds 1.0x): " + "; ".join(unclear))


if __name__ == "__main__":
    sys.exit(main())
