"""Arbitrage's router: the probability that the target would write a better next step than the draft did.

It reads draft-side information only (Maheswaran et al., `../shared/specs/speculative.md` 3.1): the problem, the
steps accepted so far annotated with who wrote them ("Model 0: " draft, "Model 1: " target) and the draft's
current step, each followed by the step separator. The model is a 2-class sequence classifier (class 1:
"the target's step scores higher", i.e. escalate) over the final token, initialised from a PRM's LM as the paper
initialises it from a PRM. `router_text` is the one place that builds its input, for training and inference
alike (the reference stresses keeping them identical).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from reasonbudget.rewards.segment_kv import SegmentKV

CONFIG_FILE = "router.json"
DRAFT_TAG, TARGET_TAG = "Model 0: ", "Model 1: "


@dataclass(frozen=True)
class RouterItem:
    problem: str
    history: tuple[tuple[str, int], ...]
    """Accepted steps with their writer (0 draft, 1 target)."""
    draft: tuple[str, ...]
    """The draft's current step (two in the round where thinking closes: its last line and the answer)."""


def router_segments(item: RouterItem, separator: str, *, annotate: bool = True) -> list[str]:
    """The router's input text in segments: the problem, then each step with its writer's tag."""
    tag = (lambda w: TARGET_TAG if w else DRAFT_TAG) if annotate else (lambda w: "")
    parts = [item.problem.strip() + "\n"]
    parts += [f"{tag(w)}{s}{separator}" for s, w in item.history]
    parts += [f"{tag(0)}{s}{separator}" for s in item.draft]
    return parts


def router_text(item: RouterItem, separator: str, *, annotate: bool = True) -> str:
    """The router's input text (no chat template: the reference feeds the PRM tokenizer's plain ids)."""
    return "".join(router_segments(item, separator, annotate=annotate))


def segment_keys(item: RouterItem) -> list[tuple]:
    """One key per segment naming the prefix it ends: a draft step that is kept later reads as history."""
    steps = item.history + tuple((s, 0) for s in item.draft)
    return [(item.problem,)] + [(item.problem, steps[: j + 1]) for j in range(len(steps))]


def encode_batch(tok, texts: Sequence[str], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (widths rounded up to 32: few distinct shapes) and the index of each last token."""
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    width = -(-max(map(len, ids)) // 32) * 32
    x = torch.full((len(ids), width), pad_id, dtype=torch.long)
    for i, row in enumerate(ids):
        x[i, : len(row)] = torch.tensor(row)
    return x, torch.tensor([len(r) - 1 for r in ids])


def escalate_logits(model, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """[B, 2] class logits at each sequence's last token (causal attention: right padding is never read)."""
    hidden = model.model(input_ids=x).last_hidden_state  # the LM body
    return model.score(hidden[torch.arange(len(last)), last])


class StepRouter:
    """A trained router directory: the classifier's weights, its tokenizer and `router.json` (separator,
    annotation, the pair it was trained for). With `prefix_cache` (segments kept; 0: none) the LM's keys and
    values are kept per (problem, steps so far), so each round reads only the draft's new step."""

    def __init__(self, path: str | Path, *, prefix_cache: int = 4096) -> None:
        from transformers import AutoTokenizer, LlamaForSequenceClassification

        path = Path(path)
        if not (path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"no router at {path} (missing {CONFIG_FILE}; train one with "
                                    "`reasonbudget train-router`)")
        self.config = json.loads((path / CONFIG_FILE).read_text())
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = LlamaForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
        self.calls = 0
        self.tokens_read = 0
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.segments = SegmentKV(prefix_cache) if prefix_cache else None

    @property
    def separator(self) -> str:
        return self.config["separator"]

    def forget(self) -> None:
        """Drop the kept states of the texts read so far, so that a new run is charged what it reads alone (a
        benchmark sends the same problems to many runs; no run may read another's prefixes for free)."""
        if self.segments is not None:
            self.segments.clear()

    @torch.inference_mode()
    def predict(self, items: Sequence[RouterItem], batch_size: int = 64) -> list[float]:
        """y_hat in [0, 1] per item: P(the target's step would score higher)."""
        annotate = self.config.get("annotate", True)
        out: list[float | None] = [None] * len(items)
        if self.segments is not None:
            for i, it in enumerate(items):
                out[i] = self._cached(it, router_segments(it, self.separator, annotate=annotate))
        rest = [i for i, y in enumerate(out) if y is None]
        texts = [router_text(items[i], self.separator, annotate=annotate) for i in rest]
        for b in range(0, len(texts), batch_size):
            x, last = encode_batch(self.tok, texts[b : b + batch_size], self.tok.pad_token_id)
            ys = torch.softmax(escalate_logits(self.model, x, last).float(), -1)[:, 1].tolist()
            for i, y in zip(rest[b : b + batch_size], ys):
                out[i] = y
            self.tokens_read += int(last.sum()) + len(last)
        self.calls += len(items)
        return out

    def _cached(self, item: RouterItem, texts: list[str]) -> float | None:
        """y_hat reading only the segments past the longest prefix read before; None when the tokenizer does
        not split the text at segment boundaries (then the whole text is read)."""
        pieces = [self.tok.encode(t, add_special_tokens=False) for t in texts]
        if [t for p in pieces for t in p] != self.tok.encode("".join(texts), add_special_tokens=False):
            return None
        keys = segment_keys(item)
        path = self.segments.lookup(keys)
        if len(path) < len(keys):
            feed = pieces[len(path) :]
            cache = self.segments.past(path)
            start = cache.get_seq_length()
            hidden = self.model.model(input_ids=torch.tensor([t for p in feed for t in p])[None], cache=cache,
                                      use_cache=True).last_hidden_state[0]
            ends = torch.tensor([len(p) for p in feed]).cumsum(0) - 1
            self.segments.add(keys[len(path) :], cache, start, [len(p) for p in feed], list(hidden[ends]))
            self.tokens_read += int(ends[-1]) + 1
            last = hidden[ends[-1]]
        else:
            last = path[-1].extra
        return float(torch.softmax(self.model.score(last).float(), -1)[1])


def load_router_dir(path: str | Path):
    """The router in a directory: a fine-tuned classifier (`StepRouter`), a head over a frozen base model
    (`rewards.head_router.HeadRouter`, `"kind": "head"` in its config) or a head over a testbed PRM's step
    features (`rewards.prm_router.PRMFeatureRouter`, `"kind": "prm-features"`)."""
    path = Path(path)
    kind = json.loads((path / CONFIG_FILE).read_text()).get("kind") if (path / CONFIG_FILE).exists() else None
    if kind == "head":
        from reasonbudget.rewards.head_router import HeadRouter

        return HeadRouter(path)
    if kind == "prm-features":
        from reasonbudget.rewards.prm_router import PRMFeatureRouter

        return PRMFeatureRouter(path)
    return StepRouter(path)
