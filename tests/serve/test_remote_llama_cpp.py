"""The remote backend against llama-cpp-python's OpenAI-compatible server on the embedded GGUF (skipped when
`llama-cpp-python[server]` is not installed). Build it with
CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install 'llama-cpp-python[server]' (about 12 minutes on one core here; the
native build's AMX path faults in libggml-cpu on this machine)."""

import subprocess
import sys
import time

import httpx
import pytest
import torch

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

from reasonbudget.engine import SamplingConfig  # noqa: E402
from reasonbudget.models.registry import resolve  # noqa: E402
from reasonbudget.methods import solve  # noqa: E402
from reasonbudget.remote.model import load_remote  # noqa: E402
from reasonbudget.serve.background import free_port  # noqa: E402

pytestmark = pytest.mark.slow

QUESTIONS = ["Tom has 3 apples and buys 4 more. How many apples does he have?",
             "A book costs 12 dollars. How much do 3 books cost?",
             "What is 17 + 25?"]


@pytest.fixture(scope="module")
def llama_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(resolve("smollm2-135m")),
                             "--model_alias", "smollm2-135m", "--host", "127.0.0.1", "--port", str(port),
                             "--n_ctx", "2048", "--n_threads", "2", "--verbose", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"llama_cpp.server did not start: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize("budget", [8, 24])
def test_budget_forcing_caps_thinking_on_llama_cpp(llama_server, budget):
    rm = load_remote(f"remote:{llama_server}#smollm2-135m")
    assert not rm.native_budget  # llama-cpp-python has no per-request thinking budget: two-phase forcing
    results = solve(rm, "budget-forcing", QUESTIONS, budget=budget, sampling=SamplingConfig(),
                    generator=torch.Generator().manual_seed(0))
    for r in results:
        assert 0 < r.usage.thinking_tokens <= budget  # llama.cpp's own token count
        assert r.answer  # an answer always follows the forced end
        if r.trace["forced_close"]:  # the budget ran out: exactly B thinking tokens, then the forcing string
            assert r.usage.thinking_tokens == budget
