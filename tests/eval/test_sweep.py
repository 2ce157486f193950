"""Sweeps end to end on a tiny random model: batching, resume after a real kill, Ray, bad input."""

import json
import signal
import subprocess
import sys
import time

import pytest

from reasonbudget.eval import SweepConfig, run_sweep

DETERMINISTIC = ("task", "method", "budget", "n", "problems", "seeds", "accuracy", "ci_low", "ci_high",
                 "mean_thinking_tokens", "mean_total_tokens", "mean_forward_passes", "mean_energy_flops")


def _summary(out):
    rows = json.loads((out / "summary.json").read_text())
    return [{k: r[k] for k in DETERMINISTIC} for r in rows]


def _records(out):
    lines = (out / "results.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    return {(r["problem_id"], r["method"], r["budget"], r["seed"]): (r["thinking"], r["answer"],
                                                                    r["usage"]["thinking_tokens"]) for r in recs}


def _cmd(model, out, extra=()):
    return [sys.executable, "-m", "reasonbudget.cli", "eval", "--task", "gsm8k", "--method",
            "budget-forcing,nothinking", "--budgets", "4,24", "--limit", "6", "--seeds", "0,1",
            "--temperature", "1.0", "--batch-size", "2", "--model", model, "--out", str(out), "--quiet", *extra]


def test_killed_sweep_resumes_to_the_uninterrupted_summary(tiny_checkpoint, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cmd(tiny_checkpoint, full), check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(_cmd(tiny_checkpoint, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = killed / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not results.exists() or results.read_text().count("\n") < 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = results.read_text().count("\n")
    assert 6 <= written < 36, "the kill must land mid-sweep"
    with results.open("a") as f:  # and a torn trailing write, as a kill inside write() would leave
        f.write('{"task": "gsm8k", "problem_id": "test-5", "method": "nothi')

    resumed = subprocess.run(_cmd(tiny_checkpoint, killed), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "corrupt line" in resumed.stderr
    assert _summary(killed) == _summary(full)
    assert _records(killed) == _records(full)
    assert len((killed / "results.jsonl").read_text().splitlines()) == 36  # no line lost or duplicated

    again = subprocess.run(_cmd(tiny_checkpoint, killed), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and len((killed / "results.jsonl").read_text().splitlines()) == 36


def test_batch_size_does_not_change_results(tiny_checkpoint, tmp_path):
    base = dict(task="gsm8k", methods=("budget-forcing",), budgets=(6,), limit=5, model=tiny_checkpoint,
                temperature=0.8)
    run_sweep(SweepConfig(**base, batch_size=5), tmp_path / "a", progress=False)
    run_sweep(SweepConfig(**base, batch_size=1), tmp_path / "b", progress=False)
    assert _records(tmp_path / "a") == _records(tmp_path / "b")


@pytest.mark.slow
def test_ray_sweep_matches_local(tiny_checkpoint, tmp_path):
    ray = pytest.importorskip("ray")
    cfg = SweepConfig(task="gsm8k", methods=("budget-forcing", "nothinking"), budgets=(5, 12), limit=4,
                      model=tiny_checkpoint, temperature=1.0, batch_size=2)
    run_sweep(cfg, tmp_path / "local", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_sweep(cfg, tmp_path / "ray", ray_address="local", progress=False)
    finally:
        ray.shutdown()
    assert _summary(tmp_path / "ray") == _summary(tmp_path / "local")
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "reasonbudget.cli", "eval", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args,fragment", [
    (["--task", "gsm9k", "--method", "plain"], "available: aime24, gsm8k, math500"),
    (["--task", "gsm8k:split=dev", "--method", "plain"], "accepted are test, train"),
    (["--task", "gsm8k", "--method", "plain,magic"], "unknown method 'magic'; available: budget-forcing"),
    (["--task", "gsm8k", "--method", "budget-forcing", "--budgets", "32,abc"], "--budgets must be"),
    (["--task", "gsm8k", "--method", "budget-forcing", "--budgets", "0,64"], "--budgets must be"),
    (["--task", "gsm8k", "--method", "budget-forcing"], "budgets are required"),
    (["--task", "gsm8k", "--method", "plain", "--model", "no-such-model"], "Available models"),
])
def test_bad_input_writes_nothing(args, fragment, tmp_path):
    out = tmp_path / "sweep"
    p = _cli(*args, "--out", str(out))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert fragment in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not out.exists()


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    p = _cli("--task", "gsm8k", "--method", "nothinking", "--out", str(blocker / "sweep"))
    assert p.returncode == 2 and "cannot write to output directory" in p.stderr and "Traceback" not in p.stderr


def test_report_command_needs_a_sweep_directory(tmp_path):
    p = subprocess.run([sys.executable, "-m", "reasonbudget.cli", "report", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "no results.jsonl" in p.stderr


def test_a_resumed_sweep_refuses_retrained_weights(tiny_checkpoint, tmp_path):
    """The identity holds the weights' fingerprint, not only the model's name: records of old and new weights
    are never mixed in one results file."""
    import shutil

    from tests.helpers import tiny_hf_model

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    cfg = SweepConfig(task="gsm8k", methods=("nothinking",), limit=1, model=str(model), temperature=0.0)
    run_sweep(cfg, tmp_path / "out", progress=False)
    run_sweep(cfg, tmp_path / "out", progress=False)  # same weights: resumes (nothing to do)
    retrained = tiny_hf_model("qwen3", seed=22)
    retrained.config.max_position_embeddings = 4096
    retrained.save_pretrained(model)
    with pytest.raises(ValueError, match="with other weights or companion artefacts"):
        run_sweep(cfg, tmp_path / "out", progress=False)
