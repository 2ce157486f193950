"""Decode speed of our engine per model x weights (bf16, bf16w, int8, int4) x batch (1, 16), against a memory bound,
`transformers` generate (bf16) and llama.cpp (when `llama-cpp-python` is installed) in the same run.

- tok/s: greedy decoding of `--tokens` new tokens after the same GSM8K prompt (prefill included), median of
  `--reps` runs interleaved across runners, so that drift in machine speed hits every runner alike.
- The bound: the best read bandwidth measured here with the threads as configured, taken over several ways to
  read memory (a float32 sum, a bf16 and an int8 matrix-vector product over a buffer far larger than the
  cache), divided by the weight bytes one decode step reads (every linear once, the LM head once; KV reads
  left out). `fraction_of_bound` = tok/s at batch 1 / bound (at batch 16 the same weights serve 16 tokens).
- The forward-time table: milliseconds for one forward that feeds 1, 4 or 8 tokens to one row (a target's
  verification pass feeds gamma + 1), per model and format; from it the step-cost ratio c = draft forward (1
  token) / target forward (1 token) for the draft/target pairs the speculative methods use.

SmolLM2 is always measured; the Qwen pair when `make real-models` has fetched it (`--models` to choose).

    python benchmarks/decode_speed.py [--models smollm2-135m,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b]
        [--weights bf16,int8,int4] [--batches 1,16] [--tokens 64] [--reps 3] [--threads 2] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from functools import partial

import torch

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")
QUANT = {"bf16": "none", "bf16w": "bf16", "int8": "int8", "int4": "int4", "f32": "none"}
"""Weight formats. bf16: a bfloat16 model (PyTorch's kernels); bf16w: bf16 weights under float32 activations
(`--quant bf16`: our kernel and the fused float32 decode step); f32 (not in the default set) is what `--dtype
auto` loads on a CPU without native bf16."""
ACTIVATIONS = {"bf16": "bfloat16", "bf16w": "float32", "f32": "float32"}
PAIRS = (("qwen2.5-coder-0.5b", "int4", "qwen2.5-coder-1.5b", "bf16"),
         ("qwen2.5-coder-0.5b", "int4", "qwen2.5-coder-1.5b", "int8"),
         ("qwen2.5-coder-1.5b", "int4", "qwen2.5-coder-1.5b", "bf16"))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_bandwidth(gib: float = 1.0, reps: int = 5) -> dict[str, float]:
    """Read bandwidth (bytes/s) of three reads over buffers much larger than the last-level cache."""
    out = {}
    x = torch.ones(int(gib * 2**30) // 4)
    out["f32_sum"] = x.numel() * 4 / min(_timed(x.sum) for _ in range(reps))
    x = None  # free the buffer before the next one
    from reasonbudget.models.llama import Linear

    k = 4096
    for name, dtype in (("bf16_matvec", torch.bfloat16), ("f32_matvec", torch.float32)):
        lin = Linear(torch.ones(int(gib * 2**30) // (dtype.itemsize * k), k, dtype=dtype))
        lin.pack()  # the runtime's own kernel: oneDNN / MKL where the CPU takes it, else F.linear
        v = torch.ones(1, k, dtype=dtype)
        out[name] = lin.weight.numel() * dtype.itemsize / min(_timed(partial(lin, v)) for _ in range(reps))
        lin = None
    v = torch.ones(1, k, dtype=torch.bfloat16)
    q = torch.ones(int(gib * 2**30) // k, k, dtype=torch.int8)
    s = torch.ones(q.shape[0], dtype=torch.bfloat16)
    out["int8_matvec"] = q.numel() / min(_timed(lambda: torch._weight_int8pack_mm(v, q, s)) for _ in range(reps))
    return out


def weight_bytes_per_token(backend: torch.nn.Module) -> int:
    """Bytes of every linear's weights (quantized or not) and scales, each tensor once."""
    from reasonbudget.models.llama import Linear
    from reasonbudget.models.quant import Bf16Linear, Int4Linear, Int8Linear

    seen, total = set(), 0
    for m in backend.modules():
        tensors = ([m.weight] if isinstance(m, Linear) else list(m.buffers(recurse=False))
                   if isinstance(m, (Bf16Linear, Int4Linear, Int8Linear)) else [])
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


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


def llama_cpp_runner(path, prompt, new_tokens: int, threads: int):
    """llama.cpp on the same GGUF file, batch 1 (None when llama-cpp-python is not installed)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(path), n_ctx=len(prompt) + new_tokens + 8, n_threads=threads, verbose=False)

    def run():
        llm.reset()
        n = 0
        for tok in llm.generate(list(prompt), temp=0.0, top_k=1):
            n += 1
            if n >= new_tokens:
                break

    return run


@torch.inference_mode()
def forward_ms(model, prompt, fed: int, reps: int = 10) -> float:
    """One forward feeding `fed` tokens to one row after the prompt (median ms)."""
    cache = model.backend.new_cache(1, len(prompt) + fed + 1)
    rows = torch.tensor([0])
    model.backend(torch.tensor([list(prompt)]), cache, rows)
    cache.lengths[0] = len(prompt)
    tokens = torch.tensor([list(prompt[-fed:])])
    model.backend(tokens, cache, rows, logits_at=torch.tensor([fed - 1]))  # warm-up
    return 1000 * statistics.median(_timed(lambda: model.backend(tokens, cache, rows, logits_at=torch.tensor([fed - 1])))
                                    for _ in range(reps))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="Comma-separated (default: SmolLM2, plus the Qwen pair if present).")
    ap.add_argument("--weights", default="bf16,bf16w,int8,int4")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per row")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--act-dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                    help="activations of the int8/int4 rows (their weights are int8/int4 either way): auto = "
                         "bfloat16 where the CPU computes it natively (AVX-512, AMX), else float32, where the "
                         "AVX2 kernels and the fused decode ops run")
    ap.add_argument("--no-hf", action="store_true", help="Skip transformers generate.")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--out", help="also write the JSON result to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from reasonbudget.models import build_prompt, load_model
    from reasonbudget.models.registry import REGISTRY, resolve, resolve_dtype

    act_dtype = resolve_dtype(args.act_dtype, "cpu", "int4")

    weights = [w for w in args.weights.split(",") if w]
    if bad := [w for w in weights if w not in QUANT]:
        ap.error(f"--weights {bad[0]!r}: accepted are {', '.join(QUANT)}")
    batches = [int(b) for b in args.batches.split(",") if b]
    names = [m for m in args.models.split(",") if m] or ["smollm2-135m"] + [
        n for n in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b") if REGISTRY[n].locate() is not None]

    meta, forwards = {}, []

    def runners_for(name: str) -> dict[tuple, object]:
        """Every runner of one model: ours per weight format and batch, HF generate, llama.cpp."""
        runs = {}
        for w in weights:
            dtype = ACTIVATIONS.get(w, act_dtype)
            model = load_model(name, dtype=dtype, quant=QUANT[w])
            prompt = build_prompt(model, QUESTION)
            meta[(name, w)] = weight_bytes_per_token(model.backend)
            for b in batches:
                runs[("engine", name, w, b)] = engine_runner(model, prompt, b, args.tokens)
            forwards.append({"model": name, "weights": w,
                             **{f"forward_ms_{k}": round(forward_ms(model, prompt, k), 2) for k in (1, 4, 8)}})
        path = resolve(name)
        if not args.no_hf:
            from transformers import AutoModelForCausalLM

            for w, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
                if w == "f32" and "f32" not in weights:
                    continue  # HF in bf16 always (the reference), in f32 beside our f32 rows
                hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
                hf.generation_config.eos_token_id = None  # always generate exactly --tokens
                hf.generation_config.pad_token_id = 0
                for b in batches:
                    runs[("hf", name, w, b)] = hf_runner(hf, prompt, b, args.tokens)
        cpp = llama_cpp_runner(path, prompt, args.tokens, args.threads)
        if cpp is not None:
            runs[("llama_cpp", name, "gguf", 1)] = cpp
        return runs

    from tqdm import tqdm

    # One model at a time, its runners interleaved over the repetitions (so that a drift of the machine hits them
    # alike), then freed: all three models in every format, with HF's and llama.cpp's copies, held at once took
    # 20.5 GB and were killed on a 24 GB machine.
    bar = tqdm(total=0, unit="run", desc="decode runs", disable=args.json)
    times: dict[tuple, list[float]] = {}
    for name in names:
        runs = runners_for(name)
        bar.total += (args.reps + 1) * len(runs)
        bar.refresh()
        for k, run in runs.items():  # warm-up
            bar.set_postfix_str(" ".join(map(str, k)))
            run()
            bar.update()
        for _ in range(args.reps):
            for k, run in runs.items():
                bar.set_postfix_str(" ".join(map(str, k)))
                times.setdefault(k, []).append(_timed(run))
                bar.update()
        del runs
        gc.collect()
    bar.close()
    bw = measure_bandwidth()
    bandwidth = max(bw.values())
    tps = {k: k[3] * args.tokens / statistics.median(v) for k, v in times.items()}

    def row(k):
        runner, name, w, b = k
        out = {"model": name, "weights": w, "batch": b, "tok_s": round(tps[k], 2)}
        if runner == "engine":
            out["activations"] = ACTIVATIONS.get(w, act_dtype)
            bound = bandwidth / meta[(name, w)]
            out.update(fraction_of_bound=round(tps[k] / b / bound, 3), bound_tok_s=round(bound, 1),
                       weight_mb_per_token=round(meta[(name, w)] / 1e6, 1))
        return out

    fwd = {(f["model"], f["weights"]): f["forward_ms_1"] for f in forwards}
    pairs = [{"draft": f"{d} {dw}", "target": f"{t} {tw}", "c": round(fwd[(d, dw)] / fwd[(t, tw)], 3)}
             for d, dw, t, tw in PAIRS if (d, dw) in fwd and (t, tw) in fwd]
    result = {"runs": [row(k) for k in tps if k[0] == "engine"], "hf": [row(k) for k in tps if k[0] == "hf"],
              "llama_cpp": [row(k) for k in tps if k[0] == "llama_cpp"], "bandwidth_gb_s": round(bandwidth / 1e9, 2),
              "bandwidth_reads_gb_s": {k: round(v / 1e9, 2) for k, v in bw.items()}, "forward": forwards,
              "step_cost_ratio": pairs,
              "settings": {"threads": args.threads, "new_tokens": args.tokens, "reps": args.reps, "dtype": "bfloat16",
                           "quantized_activations": act_dtype}}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if args.json:
        print(json.dumps(result))
        return
    print_report(result)


def print_report(result: dict) -> None:
    s = result["settings"]
    print(f"decode, {s['threads']} threads, {s['new_tokens']} new tokens per row, median of {s['reps']}; "
          f"bound from {result['bandwidth_gb_s']} GB/s (best of {result['bandwidth_reads_gb_s']})")
    print(f"{'runner':10s} {'model':20s} {'weights':7s} {'batch':>5s} {'tok/s':>9s} {'of bound':>9s}")
    for kind in ("runs", "hf", "llama_cpp"):
        for r in result[kind]:
            frac = f"{r['fraction_of_bound']:.2f}" if "fraction_of_bound" in r else "-"
            print(f"{'engine' if kind == 'runs' else kind:10s} {r['model']:20s} {r['weights']:7s} {r['batch']:5d} "
                  f"{r['tok_s']:9.1f} {frac:>9s}")
    if not result["llama_cpp"]:
        print("(llama.cpp: llama-cpp-python is not installed; `make llama-server` installs it)")
    print("\none forward, milliseconds, by tokens fed to one row")
    print(f"{'model':20s} {'weights':7s} {'1':>7s} {'4':>7s} {'8':>7s}")
    for f in result["forward"]:
        print(f"{f['model']:20s} {f['weights']:7s} {f['forward_ms_1']:7.2f} {f['forward_ms_4']:7.2f} {f['forward_ms_8']:7.2f}")
    for p in result["step_cost_ratio"]:
        print(f"c = {p['draft']} / {p['target']}: {p['c']}")


if __name__ == "__main__":
    sys.exit(main())
