"""Command line: `reasonbudget run`, `reasonbudget models`.

User mistakes (unknown model, bad budget, empty question, prompt too long) end with one `error:` line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Thinking budgets for reasoning LLMs.")

class UserError(Exception):
    """A mistake in the user's input: reported in one line, exit code 2."""


def parse_budget(text: str | None, method: str) -> int | None:
    """The --budget of a method, in the unit its capabilities declare: thinking tokens (budget methods) or N
    samples or particles (search methods)."""
    from reasonbudget.methods.spec import method_class

    caps = method_class(method).capabilities
    unit = "samples or particles" if caps.takes_samples else caps.budget
    if text is None:
        return caps.default_budget if caps.budget_required else None
    if caps.budget == "none":
        raise UserError(f"--budget applies to budgeted methods, not to {method}")
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"--budget must be a whole number of {unit} >= 1, got {text!r}") from None
    if value < 1:
        raise UserError(f"--budget must be >= 1 {unit}, got {value}")
    return value


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


@app.command()
def run(
    question: str = typer.Argument(..., help="The question to solve."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Registry name, local path, hub id, or "
                              "remote:URL#MODEL (an OpenAI-compatible server)."),
    method: Optional[str] = typer.Option(None, help="A method (`reasonbudget methods` lists them; default: budget "
                                         "forcing), with settings as NAME:key=value,... "
                                         "(e.g. budget-guidance:hard_cap=true)"),
    budget: Optional[str] = typer.Option(None, help="The method's budget: thinking tokens (budget methods; "
                                         "default 256), or N samples / particles (search methods; default 8)."),
    min_budget: int = typer.Option(0, help="Extend thinking with 'Wait' below this many tokens (methods with a "
                                   "min_thinking_tokens setting)."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    seed: int = typer.Option(0, help="Seed of this request's torch.Generator."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | auto"),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N (the in-process engine's device)."),
    quant: str = typer.Option("none", help="none | int8 | int4 | bf16: weight-only quantized linears (CPU), "
                                           "quantized on load (bf16: bf16 weights under float32 activations)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Solve one question under a thinking budget and print thinking, answer and usage."""
    from reasonbudget.methods import DEFAULT_METHOD

    method = method or DEFAULT_METHOD
    try:
        result, elapsed, b = _run(question, model, method, budget, min_budget, temperature, top_p, seed, dtype,
                                  device, quant)
    except UserError as e:
        _fail(str(e))
        return
    if as_json:
        typer.echo(json.dumps({"model": model, "method": method, "budget": b, "answer": result.answer,
                               "thinking": result.thinking, "finish_reason": result.finish_reason,
                               "usage": result.usage.to_dict(), "trace": dict(result.trace)}))
        return
    from reasonbudget.methods.spec import method_class

    _print_human(result, method, b, elapsed, method_class(method).capabilities.budget)


def _run(question, model_name, method, budget, min_budget, temperature, top_p, seed, dtype, device, quant="none"):
    import torch

    from reasonbudget.engine import PromptTooLongError, SamplingConfig
    from reasonbudget.methods import make_method, solve
    from reasonbudget.models import ModelNotFoundError

    try:
        b = parse_budget(budget, method)
        options = {"min_thinking_tokens": min_budget} if min_budget else {}
        chosen = make_method(method, SamplingConfig(temperature=temperature, top_p=top_p), **options)
    except TypeError:  # a setting the method's config does not have
        raise UserError(f"--min-budget does not apply to {method} (it has no min_thinking_tokens setting)") from None
    except ValueError as e:  # unknown method or setting
        raise UserError(str(e)) from None
    if not question.strip():
        raise UserError("the question is empty")
    try:
        backend = load_backend(model_name, dtype=dtype, device=device, quant=quant)
        t0 = time.perf_counter()
        result = solve(backend, chosen, [question], budget=b, generator=torch.Generator().manual_seed(seed))[0]
    except (ModelNotFoundError, PromptTooLongError, ValueError) as e:  # RemoteError included
        raise UserError(str(e)) from None
    return result, time.perf_counter() - t0, b


def load_backend(name: str, *, dtype: str = "float32", device: str = "cpu", quant: str = "none"):
    """The in-process engine on a local model, or a remote server for `remote:URL#MODEL`."""
    from reasonbudget.remote.model import is_remote, load_remote

    if is_remote(name):
        if quant != "none":
            raise UserError(f"--quant {quant} quantizes a local model's weights; {name} is served elsewhere")
        return load_remote(name)
    from reasonbudget.engine import Engine
    from reasonbudget.models import load_model

    return Engine(load_model(name, dtype=dtype, device=check_device(device), quant=quant))


def check_device(device: str) -> str:
    """`device` if torch can use it here, else a one-line error naming what is available."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: accepted are cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: accepted are cpu, cuda, cuda:N")
    return device


def _print_human(result, method: str, budget: int | None, elapsed: float, unit: str = "thinking tokens") -> None:
    u = result.usage
    if budget is None or unit == "none":
        typer.echo(f"--- thinking ({u.thinking_tokens} tokens) ---")
    elif unit == "samples":  # the budget is N samples or particles; usage counts all of their tokens
        typer.echo(f"--- thinking ({u.thinking_tokens} tokens over {budget} samples) ---")
    else:
        typer.echo(f"--- thinking ({u.thinking_tokens} of {budget} tokens) ---")
    typer.echo(result.thinking or "(none)")
    typer.echo("--- answer ---")
    typer.echo(result.answer)
    typer.echo("--- usage ---")
    tps = u.completion_tokens / elapsed if elapsed > 0 else 0.0
    typer.echo(f"method {method} | prompt {u.prompt_tokens} | thinking {u.thinking_tokens} | forced "
               f"{u.forced_tokens} | answer {u.answer_tokens} tokens | {elapsed:.1f} s ({tps:.0f} tok/s) | "
               f"finish {result.finish_reason}")


def parse_int_list(text: str, what: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or any(v < minimum for v in values):
        raise UserError(f"{what} must be comma-separated whole numbers >= {minimum} (e.g. 32,64,128), got {text!r}")
    return values


@app.command("eval")
def eval_(
    task: str = typer.Option(..., help="gsm8k | gsm8k:split=train | math500 | aime24"),
    method: str = typer.Option(..., help="Comma-separated methods, e.g. plain,budget-forcing,tale; settings as "
                               "NAME:key=value (budget-guidance:hard_cap=true,strength=2)."),
    budgets: Optional[str] = typer.Option(None, help="Comma-separated thinking budgets, e.g. 32,64,128."),
    limit: Optional[int] = typer.Option(None, help="Only the first N problems."),
    seeds: str = typer.Option("0", help="Comma-separated seeds."),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    temperature: float = typer.Option(0.0),
    top_p: float = typer.Option(1.0),
    dtype: str = typer.Option("float32"),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N (the in-process engine's device)."),
    quant: str = typer.Option("none", help="none | int8 | int4 | bf16: weight-only quantized linears (CPU), "
                                           "quantized on load (bf16: bf16 weights under float32 activations)."),
    batch_size: int = typer.Option(16, help="Problems decoded together in one engine batch."),
    out: str = typer.Option(..., help="Output directory (results.jsonl, summary.json/md, plots)."),
    ray: Optional[str] = typer.Option(None, help="Run on Ray: --ray (local) or --ray ADDRESS."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Sweep task x methods x budgets x seeds; resumable; writes results, summary and plots."""
    from pathlib import Path

    try:
        from reasonbudget.eval import SweepConfig, run_sweep
        from reasonbudget.methods.spec import split_method_list
        from reasonbudget.models import ModelNotFoundError

        b = parse_int_list(budgets, "--budgets", 1) if budgets else ()
        cfg = SweepConfig(task=task, methods=tuple(split_method_list(method)), budgets=b,
                          seeds=parse_int_list(seeds, "--seeds", 0), limit=limit, model=model,
                          temperature=temperature, top_p=top_p, dtype=dtype, device=check_device(device),
                          batch_size=batch_size, quant=quant)
        t0 = time.perf_counter()
        summary = run_sweep(cfg, Path(out), ray_address=ray, progress=not quiet)
    except UserError as e:
        _fail(str(e))
        return
    except (ValueError, ModelNotFoundError) as e:
        _fail(str(e))
        return
    typer.echo((summary.parent / "summary.md").read_text())
    typer.echo(f"sweep wall time {time.perf_counter() - t0:.1f} s; results in {summary.parent}/ "
               "(results.jsonl, summary.json, summary.md, accuracy_vs_*.png)")


@app.command()
def report(out: str = typer.Argument(..., help="A sweep's output directory.")) -> None:
    """Rewrite summary.json, summary.md and the plots of a sweep directory."""
    from pathlib import Path

    from reasonbudget.eval import write_report

    path = Path(out)
    if not (path / "results.jsonl").is_file():
        _fail(f"{path} has no results.jsonl (not a sweep output directory)")
    summary = write_report(path)
    typer.echo((summary.parent / "summary.md").read_text())


testbed_app = typer.Typer(no_args_is_help=True, help="The testbed: a small reasoning world with models trained here.")
app.add_typer(testbed_app, name="testbed")


@testbed_app.command("train")
def testbed_train(out: Optional[str] = typer.Option(None, help="Checkpoint directory (default: the package's)."),
                  jobs: int = typer.Option(0, help="Stages run side by side (0: 2 on a machine with 2 or more cores, "
                                                   "each with half the cores; 1: one after another).")) -> None:
    """Regenerate data and retrain the testbed target, draft, PRM, length predictor, router and TALE-PT variant."""
    import json
    import logging
    import os
    from pathlib import Path

    from reasonbudget.training.testbed import CHECKPOINTS, retrain_all

    if jobs < 0:
        raise typer.BadParameter(f"{jobs}: accepted are 0 (auto) or a positive number of stages", param_hint="--jobs")
    jobs = jobs or (2 if (os.cpu_count() or 1) >= 2 else 1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = retrain_all(Path(out) if out else CHECKPOINTS, jobs=jobs)
    prm = report["prm"]
    typer.echo(json.dumps({"target_seconds": report["target"]["train_seconds"],
                           "target_prompt_tuning_seconds": report["target_prompt_tuning"]["train_seconds"],
                           "draft_seconds": report["draft"]["train_seconds"],
                           "prm_verifier_lm_seconds": prm["verifier_lm"]["train_seconds"],
                           "prm_sampling_seconds": prm["sampling_seconds"],
                           "prm_step_head_seconds": prm["step_head"]["train_seconds"],
                           "length_predictor_seconds": report["length_predictor"]["train_seconds"],
                           "router_labelling_seconds": report["router"]["labelling_seconds"],
                           "router_seconds": report["router"]["train_seconds"],
                           "tale_pt_search_seconds": report["tale_pt"]["search_seconds"],
                           "tale_pt_sft_seconds": report["tale_pt"]["sft"]["train_seconds"],
                           "stage_seconds": report["stage_seconds"], "jobs": report["jobs"],
                           "total_seconds": report["total_seconds"]}))


@app.command("train-predictor")
def train_predictor(
    model: str = typer.Option(..., "--model", "-m", help="The LM the predictor reads (registry name or path)."),
    data: str = typer.Option("auto", help="sampled (the model's own traces on GSM8K train) | testbed (a testbed "
                                           "model's own T=1 traces) | gsm8k (reference solutions as thinking, "
                                           "off-policy) | auto (testbed for testbed models, else sampled)."),
    out: Optional[str] = typer.Option(None, help="Output directory (default: where budget-guidance looks)."),
    traces: int = typer.Option(2000, help="Number of training problems (about)."),
    epochs: int = typer.Option(8),
    lr: float = typer.Option(1e-3),
    size: str = typer.Option("small", help="small (2-layer encoder, low-rank heads for large vocabularies) | paper "
                                           "(the reference's BERT-base encoder and full-rank heads)."),
    width: Optional[int] = typer.Option(None, help="Encoder width (overrides --size)."),
    layers: Optional[int] = typer.Option(None, help="Encoder layers (overrides --size)."),
    heads: Optional[int] = typer.Option(None, help="Attention heads (overrides --size)."),
    head_rank: Optional[int] = typer.Option(None, help="Rank of the vocabulary heads; 0 = full rank."),
    temperature: float = typer.Option(0.7, help="Sampling temperature of the model's traces (--data sampled)."),
    samples: int = typer.Option(2, help="Traces per problem (--data sampled)."),
    max_thinking: int = typer.Option(1024, help="Thinking cap of a sampled trace; traces cut there are dropped."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 (the frozen LM's compute dtype; a predictor "
                                               "trained on either serves both)."),
) -> None:
    """Train Budget Guidance's remaining-length predictor for one model (the model stays frozen)."""
    import logging
    from pathlib import Path

    from reasonbudget.models import ModelNotFoundError, load_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if traces < 1 or epochs < 1 or lr <= 0 or samples < 1 or max_thinking < 1 or temperature < 0:
        _fail("--traces, --epochs, --samples and --max-thinking must be >= 1, --lr > 0 and --temperature >= 0")
    if any(v is not None and v < 1 for v in (width, layers, heads)) or (head_rank is not None and head_rank < 0):
        _fail("--width, --layers and --heads must be >= 1 and --head-rank >= 0 (0 = full rank)")
    from reasonbudget.training.length_predictor import DATA_KINDS, SIZES, train_predictor_for

    if data not in DATA_KINDS:
        _fail(f"--data {data!r}: accepted are {', '.join(DATA_KINDS)}")
    if size not in SIZES:
        _fail(f"--size {size!r}: accepted are {', '.join(SIZES)}")
    try:
        lm = load_model(model, dtype=dtype)
        if data == "testbed" and lm.profile.name != "testbed":
            raise ValueError(f"--data testbed needs a testbed model; {lm.name} is not one (use --data sampled)")
        from reasonbudget.methods.budget.guidance import default_predictor_dir

        target = Path(out) if out else default_predictor_dir(lm)
        stats = train_predictor_for(lm, target, data=data, traces=traces, epochs=epochs, lr=lr, size=size,
                                    temperature=temperature, samples=samples, max_thinking_tokens=max_thinking,
                                    width=width, layers=layers, heads=heads, head_rank=head_rank)
    except (ModelNotFoundError, ValueError) as e:
        _fail(str(e))
        return
    typer.echo(f"saved to {target} ({stats['params']} parameters, {stats['traces']} traces, "
               f"{stats['train_seconds']} s, final NLL {stats['history'][-1]['nll'] if stats['history'] else 'n/a'})")


@app.command("train-router")
def train_router_cmd(
    draft: str = typer.Option("testbed-draft", help="The draft model (registry name or path)."),
    target: str = typer.Option("testbed-target", help="The target model; the router is its companion."),
    out: Optional[str] = typer.Option(None, help="Output directory (default: the testbed target's committed "
                                                 "router; for a real target its folder in the user cache, where "
                                                 "router=auto looks first)."),
    problems: int = typer.Option(100, help="Label-generation problems per difficulty (testbed) or in all (--task)."),
    task: str = typer.Option("gsm8k:split=train", help="Label-generation problems of a real pair (a task spec)."),
    skip: int = typer.Option(0, help="A real pair: start after the task's first SKIP problems (e.g. those the PRM "
                                     "head was trained on, so that it scores steps as it would at test time)."),
    prm: str = typer.Option("auto", help="The PRM that scores both models' steps (a real pair: its trained PRM head "
                                         "directory, or auto)."),
    epochs: Optional[int] = typer.Option(None, help="Default: 3 (fine-tuned router), 60 (router heads)."),
    lr: Optional[float] = typer.Option(None, help="Default: 3e-4 (fine-tuned router), 1e-3 (router heads)."),
    balance: str = typer.Option("downsample", help="downsample (majority class to 1:1, the paper's default) | none"),
    kind: str = typer.Option("prm-features", help="Testbed: prm-features (a head over the PRM's step features, "
                                                  "started from its step head) | classifier (fine-tuned from the "
                                                  "PRM's LM, the paper's recipe)."),
    dtype: str = typer.Option("auto", help="A real pair's dtype: float32 | bfloat16 | auto (bfloat16 where its "
                                           "matmuls are native: a GPU or an AVX-512 CPU). The registered testbed "
                                           "pair runs float32."),
) -> None:
    """Train Arbitrage's router for a draft/target pair: oracle labels (both models write each step, the PRM
    scores both, the better continues), then a classifier: on the testbed a head over the PRM's step features
    (or, --kind classifier, fine-tuned from the PRM's LM), for a real pair a head over the frozen draft model
    (too large to fine-tune here)."""
    import json
    import logging
    from pathlib import Path

    from reasonbudget.models import ModelNotFoundError, load_model
    from reasonbudget.models.registry import (
        REGISTRY,
        check_shared_tokenizer,
        companion_dir,
        resolve_dtype,
        user_companion_dir,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if problems < 1 or (epochs is not None and epochs < 1) or (lr is not None and lr <= 0) or skip < 0:
        _fail("--problems and --epochs must be >= 1, --skip >= 0 and --lr > 0")
    if balance not in ("downsample", "none"):
        _fail(f"--balance {balance!r}: accepted are downsample, none")
    if kind not in ("prm-features", "classifier"):
        _fail(f"--kind {kind!r}: accepted are prm-features, classifier")
    try:
        entry = REGISTRY.get(target)  # a registered testbed pair runs float32 (a path: the dtype asked for)
        dtype = "float32" if entry is not None and entry.profile == "testbed" else resolve_dtype(dtype)
        d, t = load_model(draft, dtype=dtype), load_model(target, dtype=dtype)
        check_shared_tokenizer(d, t)
        # the testbed retrains its committed router; a real pair's goes to the user cache (found before a
        # committed one), never over the package's own
        testbed = t.profile.name == "testbed"
        where = Path(out) if out else (companion_dir if testbed else user_companion_dir)(t.name, "router")
        if testbed:
            from reasonbudget.rewards.factory import testbed_prm_dir
            from reasonbudget.training.prm_router import PRMRouterConfig
            from reasonbudget.training.router import RouterTrainConfig
            from reasonbudget.training.testbed import train_testbed_router

            cfg = (PRMRouterConfig(epochs=epochs or 60, lr=lr or 1e-3, balance=balance) if kind == "prm-features"
                   else RouterTrainConfig(epochs=epochs or 3, lr=lr or 3e-4, balance=balance))
            report = train_testbed_router(d, t, testbed_prm_dir(t), where, per_difficulty=problems, cfg=cfg,
                                          kind=kind)
        else:
            report = _train_real_router(d, t, where, task=task, skip=skip, limit=problems, prm=prm, epochs=epochs,
                                        lr=lr, balance=balance, dtype=dtype)
    except (ModelNotFoundError, ValueError) as e:
        _fail(str(e))
        return
    if report["single_class"]:
        typer.echo("warning: every labelled round has the same label: the router predicts a constant", err=True)
    typer.echo(json.dumps({"saved_to": str(where), "examples": report["examples"],
                           "labelling_seconds": report["labelling_seconds"], "train_seconds": report["train_seconds"],
                           "held_out": report["held_out"], **{k: report[k] for k in ("problems", "cross_fitted") if k in report}},
                          indent=2))


def _train_real_router(d, t, where, *, task: str, skip: int, limit: int, prm: str, epochs, lr, balance: str,
                       dtype: str) -> dict:
    """Oracle labels of a real (draft, target) pair on a task's problems, then a router head over the draft."""
    import time
    from dataclasses import replace

    from reasonbudget.rewards.factory import load_prm
    from reasonbudget.tasks import get_task
    from reasonbudget.training.router import HeadRouterConfig, generate_labels, save_examples, train_head_router

    scorer = load_prm(prm, t)
    if not getattr(scorer, "trained", True):
        raise ValueError(f"{t.name} has no trained PRM for the router's labels (prm={prm} gave "
                         f"{type(scorer).__name__}, an untrained scorer): train "
                         f"one with `reasonbudget train-prm --model {t.name}` (prm=auto then finds it), or pass "
                         f"--prm DIR (e.g. the head `train-prm --model {d.name}` wrote)")
    every = get_task(task).problems()
    if skip >= len(every):
        raise ValueError(f"--skip {skip}: {task} has {len(every)} problems")
    questions = [p.question for p in every[skip : skip + limit]]
    from pathlib import Path

    from tqdm import tqdm

    from reasonbudget.models.registry import fingerprint
    from reasonbudget.rewards.factory import head_prm_dir

    prm_dir = Path(prm) if prm != "auto" else head_prm_dir(t)
    identity = {"draft": d.name, "target": t.name, "prm": prm, "dtype": dtype,
                "prm_files": fingerprint(prm_dir) if prm_dir is not None and prm_dir.exists() else None}
    where.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tqdm(total=len(questions), unit="problem", desc="router labels", dynamic_ncols=True) as bar:
        # labels.partial.jsonl: finished problems, so that a killed labelling resumes (hours for a real pair)
        examples = generate_labels(d, t, scorer, questions, batch_size=16, max_tokens=640,
                                   journal=where / "labels.partial.jsonl", identity=identity,
                                   progress=lambda done, total: bar.update(done - bar.n))
    labelling = round(time.time() - t0, 1)
    save_examples(examples, where / "labels.jsonl")
    cfg = HeadRouterConfig(balance=balance)
    cfg = replace(cfg, **{k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None})
    report = train_head_router(examples, d, where, cfg, separator=t.profile.step_delimiter,
                               pair={"draft": d.name, "target": t.name})
    return {"labelling_seconds": labelling, "problems": {"task": task, "skip": skip, "count": len(questions)},
            **report}


@app.command("train-prm")
def train_prm_cmd(
    model: str = typer.Option(..., "--model", "-m", help="The policy whose sampled solutions are labelled (name or path)."),
    task: str = typer.Option("gsm8k:split=train", help="Problems to label (a task spec)."),
    limit: int = typer.Option(200, help="First N problems of the task."),
    base: Optional[str] = typer.Option(None, help="The frozen model the head reads (default: --model)."),
    labels: Optional[str] = typer.Option(None, help="Step-label file (JSONL; resumed when it exists). Default: "
                                                     "the user cache."),
    out: Optional[str] = typer.Option(None, help="Output directory (default: the model's folder in the user cache, where prm=auto looks first)."),
    samples: int = typer.Option(2, help="Solutions sampled per problem."),
    rollouts: int = typer.Option(3, help="Outcomes per step: the solution's own continuation and rollouts - 1 "
                                         "fresh completions from the step's end."),
    max_tokens: int = typer.Option(320, help="Token cap of a solution and of a rollout."),
    temperature: float = typer.Option(0.8),
    dtype: str = typer.Option("auto", help="float32 | bfloat16 | auto (bfloat16 where its matmuls are native: "
                                           "a GPU or an AVX-512 CPU)"),
    label_only: bool = typer.Option(False, help="Label (resumably) and stop before training the head."),
    chunk: int = typer.Option(8, help="Problems labelled together and written at once (a stop loses at most one "
                                      "chunk; the labels do not depend on it)."),
    epochs: Optional[int] = typer.Option(None, help="Passes over the labels (default: 60 for a head alone, 8 with "
                                                     "--tune-layers)."),
    hidden: int = typer.Option(128, help="Width of the head's hidden layer."),
    folds: int = typer.Option(5, help="A head over the frozen base trains on every problem and is calibrated on "
                                      "the out-of-fold scores of this many heads (1: early stopping and "
                                      "calibration on a fifth of the problems, as a tuned head always is)."),
    layers: str = typer.Option("", help="Base-model layers the head reads, comma-separated (HF numbering: the "
                                        "base's layer count = its final normed state); default: three quarters "
                                        "of the way up (`benchmarks/prm_curve.py --layer-sets` compares sets)."),
    tune_layers: int = typer.Option(0, help="Also train LoRA adapters on this many top blocks of the base (the "
                                            "head then scores text only)."),
    lora_rank: int = typer.Option(8, help="Rank of the adapters (with --tune-layers)."),
    logprobs: bool = typer.Option(False, help="Also feed the head the base model's log-probabilities of each step "
                                              "(such a head scores text only; one without scores the policy's own "
                                              "KV rows for one token per step)."),
) -> None:
    """Train a process reward model for a model without one (Math-Shepherd labels): sample solutions, roll out
    from the end of every step to label it by how often the gold answer is reached, then train a head over a
    frozen base model's hidden states. The labelling is resumable: run the same command again after a stop."""
    import json
    import logging
    from pathlib import Path

    from reasonbudget.models import ModelNotFoundError, load_model
    from reasonbudget.models.registry import cache_root, user_companion_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    epochs = epochs if epochs is not None else 8 if tune_layers else 60
    if (limit < 2 or samples < 1 or rollouts < 1 or max_tokens < 1 or epochs < 1 or hidden < 1 or lora_rank < 1
            or chunk < 1 or folds < 1):
        _fail("--limit must be >= 2; --samples, --rollouts, --max-tokens, --epochs, --hidden, --lora-rank, "
              "--chunk and --folds >= 1")
    if tune_layers < 0:
        _fail(f"--tune-layers {tune_layers}: must be >= 0 (0: a head over the frozen base)")
    try:
        read = tuple(int(v) for v in layers.split(",")) if layers.strip() else ()
    except ValueError:
        read = (-1,)
    if any(v < 0 for v in read):
        _fail(f"--layers {layers!r}: give layer numbers >= 0, comma-separated (e.g. 18 or 12,24)")
    if read and tune_layers:
        _fail("--layers is for a head over the frozen base; a tuned head reads the adapted final state")
    if temperature <= 0:
        _fail(f"--temperature {temperature}: rollout labels need sampling (> 0)")
    try:
        from reasonbudget.tasks import get_task
        from reasonbudget.training.head_prm import HeadTrainConfig, train_head
        from reasonbudget.training.step_labels import LabelConfig, label_task

        the_task = get_task(task)
        problems = the_task.problems()[:limit]
        policy = load_model(model, dtype=dtype)
        slug = f"{policy.name}-{the_task.spec}".replace("/", "--").replace(":", "_").replace("=", "-")
        where = Path(labels) if labels else cache_root() / "step-labels" / f"{slug}.jsonl"
        cfg = LabelConfig(samples=samples, rollouts=rollouts, max_tokens=max_tokens, temperature=temperature)
        typer.echo(f"labelling {len(problems)} problems into {where}", err=True)
        labelled = label_task(policy, problems, where, cfg, task=the_task.name, chunk=chunk)
        if label_only:
            return
        head_base = policy if base in (None, model) else load_model(base, dtype=dtype)
        target = Path(out) if out else user_companion_dir(policy.name, "prm")  # found before a committed head
        if any(v > head_base.backend.cfg.num_layers for v in read):
            raise ValueError(f"--layers {layers}: {head_base.name} has layers 0-{head_base.backend.cfg.num_layers}")
        head_cfg = HeadTrainConfig(epochs=epochs, hidden=hidden, logprobs=logprobs, tuned_layers=tune_layers,
                                   lora_rank=lora_rank, layers=read, folds=folds)
        if tune_layers:
            from reasonbudget.training.tuned_prm import train_tuned_head

            report = train_tuned_head(head_base, labelled, target, head_cfg)
        else:
            report = train_head(head_base, labelled, target, head_cfg,
                                features_cache=where.with_suffix(f".features-{head_base.name.replace('/', '--')}.pt"))
    except (ModelNotFoundError, ValueError) as e:
        _fail(str(e))
        return
    (target / "training.json").write_text(json.dumps(report, indent=2))
    typer.echo(json.dumps({"saved_to": str(target), "head_parameters": report["head_parameters"],
                           "steps": report["steps"], "held_out": report["held_out"]}, indent=2))


@app.command("fit-budget-estimator")
def fit_budget_estimator_cmd(
    model: str = typer.Option(..., "--model", "-m", help="The model whose budgets are searched (name or path)."),
    task: str = typer.Option("gsm8k:split=train", help="Problems to search budgets on (a task spec)."),
    limit: int = typer.Option(400, help="First N problems of the task."),
    out: str = typer.Option(..., help="Output directory (budget_estimator.json, searches.json)."),
    binary: bool = typer.Option(False, help="Bisect after the first failed halving (tighter budgets)."),
    prompts: str = typer.Option("reference", help="TALE's prompt layout for the searches: reference | ours (use "
                                                  "the same with tale:prompts=...)."),
) -> None:
    """Fit TALE's learned budget estimator: greedy budget searches, then ridge regression on prompt states.
    Use it with --method tale:estimator=DIR."""
    import logging
    from pathlib import Path

    from reasonbudget.models import ModelNotFoundError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if limit < 2:
        _fail("--limit must be >= 2")
    try:
        from reasonbudget.training.budget_estimator import fit_on_task

        stats = fit_on_task(model, task, limit, Path(out), binary=binary, layout=prompts)
    except (ModelNotFoundError, ValueError) as e:
        _fail(str(e))
        return
    typer.echo(json.dumps(stats))


@app.command()
def serve(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Registry name, local path or hub id."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | auto"),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N"),
    quant: str = typer.Option("none", help="none | int8 | int4 | bf16: weight-only quantized linears (CPU), "
                                           "quantized on load (bf16: bf16 weights under float32 activations)."),
    max_batch: int = typer.Option(64, help="Most requests decoded together in one engine batch."),
    max_queue: int = typer.Option(256, help="Requests waiting beyond this get 503 with Retry-After."),
    default_max_tokens: int = typer.Option(1024, help="max_tokens of requests that send none."),
    allow_prm_url: list[str] = typer.Option([], help="A PRM server requests may name as their scorer "
                                            "(prm=pool:URL#MODEL); repeat for several. None by default."),
    draft_model: str = typer.Option("", help="A draft model (same tokenizer) for speculative decoding: requests "
                                             "whose method can speculate use it unless they name their own."),
    draft_quant: str = typer.Option("none", help="none | int8 | int4 | bf16: the --draft-model's weight-only "
                                                 "quantization (int4: the cheapest draft step)."),
) -> None:
    """Serve a model over OpenAI-compatible HTTP (/v1/chat/completions, /v1/completions, /v1/models)."""
    from reasonbudget.models import ModelNotFoundError, load_model

    if not 0 < port < 65536:
        _fail(f"--port must be in 1..65535, got {port}")
    if max_batch < 1 or max_queue < 1 or default_max_tokens < 1:
        _fail("--max-batch, --max-queue and --default-max-tokens must be >= 1")
    try:
        lm = load_model(model, dtype=dtype, device=check_device(device), quant=quant)
        if draft_model:
            from reasonbudget.engine import Engine

            Engine(lm).speculation(draft_model, 4, draft_quant)  # load and check the pair now, not at a request
        elif draft_quant != "none":
            _fail("--draft-quant quantizes the --draft-model: name one")
            return
    except UserError as e:
        _fail(str(e))
        return
    except (ModelNotFoundError, ValueError) as e:
        _fail(str(e))
        return
    import uvicorn

    from reasonbudget.serve.app import create_app
    from reasonbudget.serve.requests import ServeConfig
    from reasonbudget.serve.scheduler import SchedulerConfig

    app_ = create_app(lm, ServeConfig(default_max_tokens=default_max_tokens, allowed_prm_urls=tuple(allow_prm_url),
                                      default_draft=draft_model, default_draft_quant=draft_quant),
                      SchedulerConfig(max_batch=max_batch, max_queue=max_queue))
    typer.echo(f"serving {lm.name} on http://{host}:{port}/v1 (OpenAI-compatible)", err=True)
    try:
        uvicorn.run(app_, host=host, port=port, log_level="warning")
    except OSError as e:
        _fail(f"cannot listen on {host}:{port}: {e}")


@app.command()
def models() -> None:
    """List the registered models and whether they are installed."""
    from reasonbudget.models import available_models

    for entry, path in available_models():
        where = str(path) if path else f"not installed ({entry.how_to_get})"
        typer.echo(f"{entry.name:22s} {entry.description}\n{'':22s} {where}")


@app.command("methods")
def methods_() -> None:
    """List the methods with what their budget counts, the backend level they need and the models they use."""
    from reasonbudget.methods import METHODS

    typer.echo(f"{'method':20s} {'budget':26s} {'level':7s} {'streams':8s} models")
    for name, cls in METHODS.items():
        c = cls.capabilities
        budget = c.budget + ("" if c.budget_required or c.budget == "none" else " (optional)")
        typer.echo(f"{name:20s} {budget:26s} {c.level:7s} {c.streams:8s} {', '.join(c.models)}")


def _ray_flag_default(argv: list[str]) -> list[str]:
    """`--ray` may stand alone (local Ray); give it the value 'local' so the option parser accepts it."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--ray" and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out.insert(i + 1, "local")
            break
    return out


def main() -> None:
    sys.argv = _ray_flag_default(sys.argv)
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
