"""The testbed's trained process reward model: a verifier LM read by a trained step head.

A step is judged from how the verifier LM (a testbed LM trained longer than the target policy, as real PRMs
start from strong models) reads it: the log-probabilities it gives the step's tokens (the lowest in the
step, the mean, and the lowest over the whole trace so far) and its final hidden state at the newline that
ends the step. A small MLP over those features predicts P(trace still correct after this step); it is
trained with binary cross-entropy on traces sampled at temperature 1 from the draft and the target and
labelled by the step checker. The LM stays frozen.

Why not fine-tune an LM as a token classifier (the usual recipe)? Measured here: initialised from the
target and trained on the same data it reached a held-out step AUROC of only 0.77, because checking
`a op k = r` at the newline needs the sum the LM computes one position earlier; the LM's own surprise at
the written digits carries that check directly (AUROC 0.99 from the running-minimum log-probability alone).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from reasonbudget.models.registry import DTYPES, resolve_dtype
from reasonbudget.rewards.base import StepSequence
from reasonbudget.rewards.segment_kv import SegmentKV

HEAD_FILE, HEAD_CONFIG = "step_head.safetensors", "step_head.json"
SCALAR_FEATURES = 3  # line min log-prob, line mean log-prob, running min log-prob
LOGPROB_FLOOR = -20.0


def encode_item(tok, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
    """Token ids and, per step, the index of the newline token that ends it."""
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=False)
    ends = []
    for step in steps:
        ids += tok.encode(step + "\n", add_special_tokens=False)
        ends.append(len(ids) - 1)
    return ids, ends


def _batch(tok, items: Sequence[tuple[str, Sequence[str]]]) -> tuple[Tensor, Tensor, list[list[int]]]:
    encoded = [encode_item(tok, q, s) for q, s in items]
    width = -(-max(len(ids) for ids, _ in encoded) // 32) * 32  # few distinct shapes: oneDNN caches per shape
    x = torch.full((len(items), width), tok.eos_token_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, (ids, _) in enumerate(encoded):
        x[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    return x, mask, [ends for _, ends in encoded]


def line_features(line_logprobs: Tensor, running: float) -> list[float]:
    """One step's unscaled scalar features from its characters' log-probs (not its newline's) and the running
    minimum before it; pure. -> [line min, line mean, running min after it]"""
    line = line_logprobs.clamp(min=LOGPROB_FLOOR)
    low = float(line.min()) if line.numel() else 0.0
    return [low, float(line.mean()) if line.numel() else 0.0, min(running, low)]


def features_from_logprobs(token_logprobs: Tensor, ends: Sequence[int], first: int) -> Tensor:
    """Scalar features per step; pure. token_logprobs[t]: log p(token t | tokens < t); the steps' tokens
    start at `first` and step i ends with its newline at ends[i]. -> [num_steps, SCALAR_FEATURES]"""
    rows, running, start = [], 0.0, first
    for end in ends:
        rows.append(line_features(token_logprobs[start:end], running))
        running, start = rows[-1][2], end + 1
    return torch.tensor(rows) / -LOGPROB_FLOOR


@torch.inference_mode()
def step_features(lm, tok, items: Sequence[tuple[str, Sequence[str]]], batch_size: int = 64) -> list[Tensor]:
    """Per item: [num_steps, SCALAR_FEATURES + d_model] from one forward of the verifier LM."""
    out: list[Tensor] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        x, mask, ends = _batch(tok, chunk)
        res = lm(input_ids=x, attention_mask=mask, output_hidden_states=True)
        logp = torch.log_softmax(res.logits.float(), dim=-1)
        token_lp = torch.cat([torch.zeros(x.shape[0], 1), logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]], dim=1)
        hidden = res.hidden_states[-1].float()
        for b, ((_, steps), e) in enumerate(zip(chunk, ends)):
            if not e:
                out.append(torch.zeros(0, SCALAR_FEATURES + hidden.shape[-1]))
                continue
            first = e[0] - len(tok.encode(steps[0] + "\n", add_special_tokens=False)) + 1
            out.append(torch.cat([features_from_logprobs(token_lp[b], e, first), hidden[b, e]], dim=1))
    return out


class StepHead(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(SCALAR_FEATURES + d_model, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)[..., 0]


class TestbedPRM:
    """`ProcessRewardModel` over a checkpoint directory: the verifier LM plus `step_head.safetensors`.

    With `prefix_cache` (segments kept, default 4096; 0: none) the verifier LM's keys and values are kept per
    (question, steps so far): a trace that extends one scored before feeds only its new steps, so scoring every
    step of a search or drafting run reads each token once instead of once per later step. A segment (a step's
    keys and values, its features) takes about 62 KiB on the v2 checkpoints: 250 MiB at most by default."""

    def __init__(self, path: str | Path, *, prefix_cache: int = 4096) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, LlamaForCausalLM

        path = Path(path)
        self.tok = AutoTokenizer.from_pretrained(str(path))
        # bfloat16 as stored where its matmuls are native, else float32 (an AVX2 CPU converts bf16 on every matmul)
        self.lm = LlamaForCausalLM.from_pretrained(str(path), dtype=DTYPES[resolve_dtype("auto")]).eval()
        cfg = json.loads((path / HEAD_CONFIG).read_text())
        self.head = StepHead(cfg["d_model"], cfg["hidden"]).eval()
        self.head.load_state_dict(load_file(str(path / HEAD_FILE)))
        self.tokens_read = 0
        self.segments = SegmentKV(prefix_cache) if prefix_cache else None

    def count_tokens(self, items: Sequence[StepSequence]) -> int:
        return sum(len(encode_item(self.tok, it.problem, it.steps)[0]) for it in items)

    def forget(self) -> None:
        """Drop the kept states of the texts read so far, so that a new run is charged what it reads alone (a
        benchmark sends the same problems to many runs; no run may read another's prefixes for free)."""
        if self.segments is not None:
            self.segments.clear()

    @torch.inference_mode()
    def score_steps(self, items: Sequence[StepSequence], batch_size: int = 64) -> list[Tensor]:
        feats = self.score_features([(it.problem, tuple(it.steps)) for it in items], batch_size)
        return [torch.sigmoid(self.head(f)) for f in feats]

    @torch.inference_mode()
    def score_features(self, items: Sequence[tuple[str, tuple[str, ...]]], batch_size: int = 64) -> list[Tensor]:
        """Per (question, steps): the step head's input, [num_steps, SCALAR_FEATURES + d_model]."""
        if self.segments is not None:
            return [self._cached_features(q, tuple(steps)) for q, steps in items]
        self.tokens_read += self.count_tokens([StepSequence(q, s) for q, s in items])
        return step_features(self.lm, self.tok, items, batch_size)

    @torch.inference_mode()
    def _cached_features(self, question: str, steps: tuple[str, ...]) -> Tensor:
        """[num_steps, SCALAR_FEATURES + d_model], as `step_features` computes them, feeding only the steps
        past the longest prefix read before."""
        keys = [(question,)] + [(question, steps[: j + 1]) for j in range(len(steps))]
        path = self.segments.lookup(keys)
        known = [seg.extra["feature"] for seg in path[1:]]
        if len(path) == len(keys):
            return torch.stack(known) if known else torch.zeros(0, SCALAR_FEATURES + self.lm.config.hidden_size)
        pieces = [encode_item(self.tok, question, ())[0] if len(path) == 0 else None]
        pieces += [self.tok.encode(step + "\n", add_special_tokens=False) for step in steps]
        feed = pieces[len(path) :]
        x = torch.tensor([t for piece in feed for t in piece])
        cache = self.segments.past(path)
        start = cache.get_seq_length()
        res = self.lm(input_ids=x[None], cache=cache, use_cache=True, output_hidden_states=True)
        logp = torch.log_softmax(res.logits[0].float(), dim=-1)
        hidden = res.hidden_states[-1][0].float()
        first = path[-1].extra["next"][x[0]] if path else torch.tensor(0.0)  # position 0 has no context
        token_lp = torch.cat([first.view(1), logp[:-1].gather(-1, x[1:, None])[:, 0]])
        self.tokens_read += len(x)
        extras, pos = [], 0
        running = path[-1].extra["running"] if path else 0.0
        for k, piece in enumerate(feed, start=len(path)):
            end = pos + len(piece) - 1  # the segment's last token: the prompt's, or the step's newline
            extra = {"next": logp[end].clone(), "running": running, "feature": None}  # not a view of logp
            if k > 0:
                row = line_features(token_lp[pos:end], running)
                running = row[2]
                extra.update(running=running,
                             feature=torch.cat([torch.tensor(row) / -LOGPROB_FLOOR, hidden[end]]))
                known.append(extra["feature"])
            extras.append(extra)
            pos = end + 1
        self.segments.add(keys[len(path) :], cache, start, [len(p) for p in feed], extras)
        return torch.stack(known) if known else torch.zeros(0, SCALAR_FEATURES + hidden.shape[-1])
