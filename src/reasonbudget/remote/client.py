"""A client for any OpenAI-compatible completions server (vLLM, SGLang, llama.cpp's server, ours).

Prompts of one call are sent concurrently (the server batches them); a 503 or 429 is retried after the
server's Retry-After. Failures the user can fix (unreachable URL, unknown model) raise `RemoteError` with
what was tried.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx


class RemoteError(ValueError):
    pass


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    body: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RemoteServer:
    base_url: str
    """Up to and including /v1, e.g. http://127.0.0.1:8000/v1."""
    model: str
    api_key: str | None = None
    timeout: float = 600.0
    max_concurrency: int = 64
    max_retries: int = 8

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(timeout=self.timeout, headers=headers,
                                 limits=httpx.Limits(max_connections=self.max_concurrency))

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            try:
                r = self.http.request(method, url, **kw)
            except httpx.TransportError as e:
                raise RemoteError(f"cannot reach {url}: {type(e).__name__}: {e}") from None
            if r.status_code in (429, 503) and attempt < self.max_retries:
                time.sleep(float(r.headers.get("retry-after", 2 ** min(attempt, 4))))
                continue
            if r.status_code >= 400:
                raise RemoteError(f"{method} {url} answered {r.status_code}: {_message(r)}")
            return r
        raise AssertionError("unreachable")

    def model_card(self) -> Mapping[str, Any]:
        """This model's entry of GET /models ({} when the server does not list it)."""
        try:
            cards = self._request("GET", "/models").json().get("data", [])
        except (RemoteError, ValueError):
            return {}
        return next((c for c in cards if c.get("id") == self.model), {})

    def complete_one(self, prompt: str, *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int | None = None, stop: Sequence[str] = (), extra: Mapping[str, Any] | None = None,
                     ) -> Completion:
        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                                "temperature": temperature, "top_p": top_p, **(extra or {})}
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        data = self._request("POST", "/completions", json=body).json()
        choice, usage = data["choices"][0], data.get("usage") or {}
        return Completion(text=choice.get("text") or "", finish_reason=choice.get("finish_reason") or "stop",
                          prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)), body=data)

    def complete(self, prompts: Sequence[str], *, max_tokens: int | Sequence[int],
                 seeds: Sequence[int | None] | None = None, extras: Sequence[Mapping[str, Any]] | None = None,
                 **kw: Any) -> list[Completion]:
        """One completion per prompt, sent concurrently; results in prompt order. `max_tokens`, `seeds` and
        `extras` (extra body fields) may be given per prompt."""
        n = len(prompts)
        caps = [max_tokens] * n if isinstance(max_tokens, int) else list(max_tokens)
        seeds = list(seeds) if seeds is not None else [None] * n
        extras = list(extras) if extras is not None else [None] * n
        jobs = list(zip(prompts, caps, seeds, extras))

        def one(job: tuple) -> Completion:
            p, cap, seed, extra = job
            return self.complete_one(p, max_tokens=cap, seed=seed, extra=extra, **kw)

        if n <= 1:
            return [one(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, n)) as pool:
            return list(pool.map(one, jobs))

    def close(self) -> None:
        self.http.close()


def _message(r: httpx.Response) -> str:
    try:
        err = r.json().get("error")
        return err.get("message", str(err)) if isinstance(err, Mapping) else str(err or r.text[:300])
    except ValueError:
        return r.text[:300]
