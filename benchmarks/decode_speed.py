"""Decode speed on the embedded SmolLM2-135M: our engine vs `transformers` generate, batch 1 and 16.

Everything is measured in one run, same dtype, same thread count: greedy decoding of a fixed number of new
tokens after the same GSM8K prompt (prefill included for both). The bandwidth bound is the memory read
bandwidth measured here divided by the weight bytes read per decoded token (every linear layer's weights,
the LM head once); KV-cache reads are left out, so the bound is slightly optimistic.

    python benchmarks/decode_speed.py [--dtype bfloat16|float32] [--tokens 128] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")


def measure_bandwidth(gib: float = 2.0, reps: int = 5) -> float:
    """Read bandwidth in bytes/s: sum over a buffer larger than the last-level cache."""
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    best = min(_timed(lambda: x.sum()) for _ in range(reps))
    return x.numel() * 4 / best


def weight_bytes_per_token(backend: torch.nn.Module) -> int:
    from reasonbudget.models.llama import Linear

    seen, total = set(), 0
    for m in backend.modules():
        if isinstance(m, Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            total += m.weight.numel() * m.weight.element_size()
    return total


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def engine_runner(model, prompt, batch: int, new_tokens: int):
    from reasonbudget.engine import Engine, SamplingConfig

    engine = Engine(model)

    def run():
        rows = engine.prefill([prompt] * batch, max_new_tokens=new_tokens)
        out = engine.decode(rows, max_new_tokens=new_tokens, sampling=SamplingConfig(), stop_on_eos=False)
        engine.release(rows)
        assert all(len(d.tokens) == new_tokens for d in out)

    return run


def hf_runner(hf, prompt, batch: int, new_tokens: int):
    ids = torch.tensor([prompt] * batch)
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)
        assert out.shape[1] == ids.shape[1] + new_tokens

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per row")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--out", help="also write the JSON result to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from reasonbudget.models import build_prompt, load_model
    from reasonbudget.models.registry import DTYPES, resolve

    model = load_model("smollm2-135m", dtype=args.dtype)
    path = resolve("smollm2-135m")
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=DTYPES[args.dtype]).eval()
    hf.generation_config.eos_token_id = None  # always generate exactly --tokens
    hf.generation_config.pad_token_id = 0
    prompt = build_prompt(model, QUESTION)

    runners = {f"{name}_b{b}": make(m, prompt, b, args.tokens)
               for name, make, m in (("engine", engine_runner, model), ("hf", hf_runner, hf)) for b in (1, 16)}
    for run in runners.values():  # warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.reps):  # interleaved, so drift in machine speed hits every runner alike
        for k, run in runners.items():
            times[k].append(_timed(run))
    tps = {k: (16 if k.endswith("b16") else 1) * args.tokens / statistics.median(v) for k, v in times.items()}

    bandwidth = measure_bandwidth()
    wbytes = weight_bytes_per_token(model.backend)
    result = {f"{k}_tps": round(v, 2) for k, v in tps.items()}
    result["bandwidth_bound_tps"] = round(bandwidth / wbytes, 2)
    extra = {"dtype": args.dtype, "threads": args.threads, "new_tokens": args.tokens, "prompt_tokens": len(prompt),
             "bandwidth_gbs": round(bandwidth / 1e9, 2), "weight_mb_per_token": round(wbytes / 1e6, 1),
             "engine_b1_over_hf_b1": round(tps["engine_b1"] / tps["hf_b1"], 2),
             "engine_b16_over_engine_b1": round(tps["engine_b16"] / tps["engine_b1"], 2),
             "engine_b16_over_hf_b16": round(tps["engine_b16"] / tps["hf_b16"], 2),
             "engine_b1_fraction_of_bound": round(tps["engine_b1"] / result["bandwidth_bound_tps"], 2)}
    full = {**result, **extra}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(full, f, indent=2)
    if args.json:
        print(json.dumps(result))
        return
    print(f"SmolLM2-135M decode, {args.dtype}, {args.threads} threads, {len(prompt)}-token prompt + "
          f"{args.tokens} new tokens, median of {args.reps}")
    print(f"{'runner':12s} {'tok/s':>9s}")
    for k, v in tps.items():
        print(f"{k:12s} {v:9.1f}")
    print(f"{'bound_b1':12s} {result['bandwidth_bound_tps']:9.1f}   "
          f"({extra['bandwidth_gbs']} GB/s / {extra['weight_mb_per_token']} MB per token)")
    for k in ("engine_b1_over_hf_b1", "engine_b16_over_engine_b1", "engine_b16_over_hf_b16",
              "engine_b1_fraction_of_bound"):
        print(f"{k:28s} {extra[k]}")


if __name__ == "__main__":
    sys.exit(main())
