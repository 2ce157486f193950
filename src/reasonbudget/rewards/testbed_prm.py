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

from reasonbudget.rewards.base import StepSequence

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


def features_from_logprobs(token_logprobs: Tensor, ends: Sequence[int], first: int) -> Tensor:
    """Scalar features per step; pure. token_logprobs[t]: log p(token t | tokens < t); the steps' tokens
    start at `first` and step i ends with its newline at ends[i]. -> [num_steps, SCALAR_FEATURES]"""
    rows, running, start = [], 0.0, first
    for end in ends:
        line = token_logprobs[start:end].clamp(min=LOGPROB_FLOOR)  # the step's characters, not its newline
        low = float(line.min()) if line.numel() else 0.0
        running = min(running, low)
        rows.append([low, float(line.mean()) if line.numel() else 0.0, running])
        start = end + 1
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
    """`ProcessRewardModel` over a checkpoint directory: the verifier LM plus `step_head.safetensors`."""

    def __init__(self, path: str | Path) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, LlamaForCausalLM

        path = Path(path)
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.lm = LlamaForCausalLM.from_pretrained(str(path)).eval()
        cfg = json.loads((path / HEAD_CONFIG).read_text())
        self.head = StepHead(cfg["d_model"], cfg["hidden"]).eval()
        self.head.load_state_dict(load_file(str(path / HEAD_FILE)))
        self.tokens_read = 0

    def count_tokens(self, items: Sequence[StepSequence]) -> int:
        return sum(len(encode_item(self.tok, it.problem, it.steps)[0]) for it in items)

    @torch.inference_mode()
    def score_steps(self, items: Sequence[StepSequence], batch_size: int = 64) -> list[Tensor]:
        feats = step_features(self.lm, self.tok, [(it.problem, it.steps) for it in items], batch_size)
        self.tokens_read += self.count_tokens(items)
        return [torch.sigmoid(self.head(f)) for f in feats]
