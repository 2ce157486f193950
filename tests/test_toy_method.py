"""Adding a method is one file: a method defined here, registered, runs in `run`, `eval` and the server with no
change anywhere else (the callers read its capabilities)."""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from reasonbudget.engine import BudgetConfig, SamplingConfig
from reasonbudget.methods import METHODS, Capabilities
from reasonbudget.types import MethodResult


@dataclass(frozen=True, kw_only=True)
class ShortestConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_thinking_tokens: int = 24


@dataclass(frozen=True)
class ShortestOfN:
    """N sampled solutions per prompt (text level: any backend), keep the one with the fewest thinking tokens."""

    name: ClassVar[str] = "shortest-of-n"
    capabilities: ClassVar[Capabilities] = Capabilities(budget="samples", default_budget=2)
    config_type: ClassVar[type] = ShortestConfig
    config: ShortestConfig = field(default_factory=ShortestConfig)

    def run(self, backend, prompts, *, budget, generator, observers=None) -> list[MethodResult]:
        n = budget
        cfg = BudgetConfig(max_thinking_tokens=self.config.max_thinking_tokens, max_answer_tokens=16)
        sampling = self.config.sampling if not self.config.sampling.greedy else SamplingConfig(temperature=1.0)
        gens = generator if isinstance(generator, Sequence) else [generator] * len(prompts)
        flat = backend.generate([p for p in prompts for _ in range(n)], [cfg] * (n * len(prompts)), sampling,
                                [g for g in gens for _ in range(n)])
        out = []
        for i in range(len(prompts)):
            mine = flat[i * n : (i + 1) * n]
            best = min(mine, key=lambda r: r.usage.thinking_tokens)
            usage = sum((r.usage for r in mine[1:]), mine[0].usage)
            out.append(MethodResult(tokens=best.tokens, thinking=best.thinking, answer=best.answer, usage=usage,
                                    trace={"n": n}))
        for o, r in zip(observers or (), out):
            o.on_result(r)
        return out


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(METHODS, ShortestOfN.name, ShortestOfN)
    return ShortestOfN.name


QUESTION = "Compute 3 + 4 then * 2."


def test_the_toy_method_runs_from_the_command_line(toy):
    from typer.testing import CliRunner

    from reasonbudget.cli import app

    done = CliRunner().invoke(app, ["run", QUESTION, "--model", "testbed-target", "--method", toy, "--budget", "3",
                                    "--temperature", "1", "--json"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.output.strip().splitlines()[-1])
    assert out["method"] == toy and out["budget"] == 3 and out["trace"]["n"] == 3


def test_the_toy_method_runs_in_an_eval_sweep(toy, tmp_path):
    from reasonbudget.eval import SweepConfig, run_sweep

    cfg = SweepConfig(task="testbed:d=2", methods=(f"{toy}:max_thinking_tokens=16",), budgets=(2,), limit=3,
                      model="testbed-target", temperature=1.0)
    run_sweep(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["budget"] == 2 and r["trace"]["n"] == 2 for r in records)


def test_the_toy_method_is_served(toy):
    from fastapi.testclient import TestClient

    from reasonbudget.models import load_model
    from reasonbudget.serve.app import create_app

    app = create_app(load_model("testbed-target"))
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={
            "model": "testbed-target", "messages": [{"role": "user", "content": QUESTION}], "method": toy,
            "budget": 3, "temperature": 1.0, "seed": 1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["reasonbudget"]["method"].startswith(toy) and body["reasonbudget"]["budget"] == 3
        assert body["choices"][0]["message"]["content"]
        bad = client.post("/v1/chat/completions", json={
            "model": "testbed-target", "messages": [{"role": "user", "content": QUESTION}], "method": toy,
            "thinking_token_budget": 5})
        assert bad.status_code == 400 and "takes N samples or particles" in bad.json()["error"]["message"]
