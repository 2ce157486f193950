"""The CLI as a user meets it: real subprocesses, one-line errors, JSON output."""

import json
import subprocess
import sys

import pytest

QUESTION = "Tom has 3 boxes of 12 pencils. How many pencils does he have?"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reasonbudget.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args,fragment", [
    (["run", QUESTION, "--model", "no-such-model"], "Available models: smollm2-135m"),
    (["run", QUESTION, "--model", "/tmp/definitely/missing.gguf"], "Available models"),
    (["run", QUESTION, "--budget", "0"], "--budget must be >= 1"),
    (["run", QUESTION, "--budget", "-5"], "--budget must be >= 1"),
    (["run", QUESTION, "--budget", "12.5"], "whole number"),
    (["run", QUESTION, "--budget", "lots"], "whole number"),
    (["run", "   "], "question is empty"),
    (["run", QUESTION, "--method", "magic"], "available: budget-forcing, budget-guidance, nothinking, plain, tale"),
    (["run", QUESTION, "--method", "budget-guidance:hardcap=true"], "no setting 'hardcap'; accepted: predictor"),
    (["run", QUESTION, "--method", "budget-guidance:hard_cap=maybe"], "accepted are true or false"),
    (["run", QUESTION, "--method", "budget-guidance:predictor=/nonexistent/pred"], "missing length_predictor.json"),
    (["train-predictor", "--model", "testbed-target", "--traces", "0"], "--traces, --epochs, --samples and --max-thinking must be >= 1"),
    (["train-predictor", "--model", "smollm2-135m", "--data", "testbed"], "needs a testbed model"),
    (["run", QUESTION, "--temperature", "-1"], "temperature"),
    (["run", QUESTION, "--method", "particle-filter", "--budget", "0"], "--budget must be >= 1 samples or particles"),
    (["run", QUESTION, "--method", "particle-gibbs:iterations=2", "--budget", "3"], "multiple of iterations"),
    (["run", QUESTION, "--method", "beam-search:prm=oracle"], "scores testbed problems only"),
    (["run", QUESTION, "--method", "particle-filter:resampler=stratified"], "accepted are multinomial, systematic"),
    (["run", QUESTION, "--model", "remote:localhost:8000"], "remote:URL#MODEL"),
    (["run", QUESTION, "--model", "remote:http://127.0.0.1:9/v1#m"], "cannot reach http://127.0.0.1:9/v1/models"),
    (["serve", "--model", "no-such-model"], "Available models: smollm2-135m"),
    (["serve", "--port", "70000"], "--port must be in 1..65535"),
])
def test_bad_input_is_one_clear_line(args, fragment):
    p = cli(*args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], p.stderr


@pytest.mark.slow
def test_prompt_longer_than_context():
    p = cli("run", "word " * 9000)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "context is 8192" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_json_output_reports_thinking_answer_and_usage():
    p = cli("run", QUESTION, "--budget", "16", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["answer"].strip() and isinstance(out["thinking"], str)
    u = out["usage"]
    assert 1 <= u["thinking_tokens"] <= 16 and u["answer_tokens"] >= 1 and u["wall_seconds"] > 0


def test_models_lists_the_registry():
    p = cli("models")
    assert p.returncode == 0 and "smollm2-135m" in p.stdout and "qwen2.5-coder-1.5b" in p.stdout


def test_search_methods_run_from_the_cli_with_n_as_budget():
    from reasonbudget.tasks import get_task

    question = get_task("testbed:d=3").problems(1)[0].question
    p = cli("run", question, "--model", "testbed-target", "--method", "particle-filter", "--budget", "4",
            "--temperature", "0.8", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["budget"] == 4 and out["answer"].startswith("The answer is")
    assert out["usage"]["prm_calls"] >= 4 and out["trace"]["n"] == 4
    human = cli("run", question, "--model", "testbed-target", "--method", "particle-filter", "--budget", "4",
                "--temperature", "0.8")
    assert human.returncode == 0 and "tokens over 4 samples) ---" in human.stdout  # N, not a token budget
