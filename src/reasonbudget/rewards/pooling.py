"""A PRM served by vLLM's pooling runner (`vllm serve Qwen/Qwen2.5-Math-PRM-7B --runner pooling`), named
`prm=pool:URL#MODEL` (URL up to /v1).

Request (one per item, sent concurrently): POST {URL}/pooling with the Qwen2.5-Math-PRM protocol as chat
messages: the system prompt, the question, and the assistant turn of the steps each followed by `<extra_0>`.
Response: `data[0].data` holds one [P(wrong), P(right)] pair per step tag (STEP pooling); the step's score is
P(right). A server that cannot be reached, is missing the route, or fails (5xx) raises `PRMUnavailable`: the
search fails with that one line (on this project's server: that request alone, 502). A reply that rejects or
garbles one item raises ValueError for that item only; the search scorer drops that candidate and goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch
from torch import Tensor

from reasonbudget.rewards.base import PRMUnavailable, StepSequence
from reasonbudget.rewards.hf_prm import QWEN_PRM_SYSTEM

PREFIX = "pool:"
SEPARATOR = "<extra_0>"


def parse_pool_name(name: str) -> tuple[str, str]:
    """'pool:http://host:8001/v1#Qwen/Qwen2.5-Math-PRM-7B' -> (base URL, model)."""
    url, sep, model = name[len(PREFIX):].partition("#")
    if not url.startswith(("http://", "https://")) or not sep or not model:
        raise ValueError(f"{name!r}: a pooled PRM is named pool:URL#MODEL, e.g. "
                         "pool:http://127.0.0.1:8001/v1#Qwen/Qwen2.5-Math-PRM-7B")
    return url.rstrip("/"), model


def pooling_messages(item: StepSequence, system: str = QWEN_PRM_SYSTEM) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": item.problem},
            {"role": "assistant", "content": "".join(s + SEPARATOR for s in item.steps)}]


def step_scores(body: dict, num_steps: int) -> Tensor:
    """P(right) per step from a /pooling answer; ValueError when it does not hold one pair per step."""
    try:
        pairs = body["data"][0]["data"]
        scores = torch.tensor([float(p[1]) for p in pairs], dtype=torch.float32)
    except (KeyError, IndexError, TypeError, ValueError):
        raise ValueError(f"the pooling answer is not [[P(wrong), P(right)], ...] per step: {str(body)[:200]}") from None
    if scores.numel() != num_steps:
        raise ValueError(f"the pooling answer scores {scores.numel()} steps, the item has {num_steps}")
    return scores


class PooledPRM:
    """`ProcessRewardModel` over HTTP."""

    step_separator = "\n\n"

    def __init__(self, name: str, *, timeout: float = 120.0, max_concurrency: int = 32) -> None:
        self.url, self.model = parse_pool_name(name)
        self.http = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=max_concurrency))
        self.max_concurrency = max_concurrency
        self.tokens_read = 0

    def _one(self, item: StepSequence) -> Tensor:
        if not item.steps:
            return torch.zeros(0)
        try:
            r = self.http.post(f"{self.url}/pooling", json={"model": self.model, "messages": pooling_messages(item)})
        except httpx.TransportError as e:
            raise PRMUnavailable(f"the PRM at {self.url} cannot be reached: {type(e).__name__}: {e}") from None
        if r.status_code == 404 or r.status_code >= 500:  # the scorer, not this item (its body is not echoed)
            raise PRMUnavailable(f"the PRM at {self.url}/pooling answered {r.status_code}")
        if r.status_code >= 400:
            raise ValueError(f"the PRM at {self.url}/pooling refused an item ({r.status_code})")
        body = r.json()
        self.tokens_read += int((body.get("usage") or {}).get("prompt_tokens", 0))
        return step_scores(body, len(item.steps))

    def score_steps(self, items: Sequence[StepSequence]) -> list[Tensor]:
        if len(items) <= 1:
            return [self._one(it) for it in items]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(self._one, items))
