"""Hugging Face process reward models with the Qwen2.5-Math-PRM protocol.

Input: system "Please reason step by step, and put your final answer within \\boxed{}.", the question as the
user turn, and as the assistant turn the steps joined by the separator token `<extra_0>` with one more
`<extra_0>` at the end. The model has a two-class head over tokens; the score of step i is softmax(logits)[1]
at the i-th separator. Works with the real checkpoints (custom code, `trust_remote_code`) and with any
token-classification model whose tokenizer has the separator (the tests build a tiny random one).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from reasonbudget.rewards.base import StepSequence

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class HFProcessRewardModel:
    step_separator = "\n\n"

    def __init__(self, path: str | Path, *, separator: str = "<extra_0>", system: str = QWEN_PRM_SYSTEM,
                 max_tokens: int = 8192, batch_size: int = 8, trust_remote_code: bool = True) -> None:
        from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        self.separator_id = self.tok.convert_tokens_to_ids(separator)
        if not isinstance(self.separator_id, int) or self.separator_id == self.tok.unk_token_id:
            raise ValueError(f"the PRM tokenizer at {path} has no step separator token {separator!r}")
        try:
            self.model = AutoModelForTokenClassification.from_pretrained(str(path))
        except ValueError:  # Qwen2.5-Math-PRM ships its own class
            self.model = AutoModel.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        self.model.eval()
        self.separator, self.system = separator, system
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.tokens_read = 0

    def encode(self, item: StepSequence) -> list[int]:
        body = "".join(step + self.separator for step in item.steps)
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": item.problem},
                    {"role": "assistant", "content": body}]
        if self.tok.chat_template:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        ids = self.tok.encode(text, add_special_tokens=False)
        return ids[-self.max_tokens :]  # left-truncate: the steps matter more than the system prompt

    @torch.inference_mode()
    def score_steps(self, items: Sequence[StepSequence]) -> list[Tensor]:
        out: list[Tensor] = []
        for i in range(0, len(items), self.batch_size):
            encoded = [self.encode(it) for it in items[i : i + self.batch_size]]
            width = max(len(e) for e in encoded)
            x = torch.zeros((len(encoded), width), dtype=torch.long)  # right padding, masked: any valid id
            mask = torch.zeros_like(x)
            for b, e in enumerate(encoded):
                x[b, : len(e)], mask[b, : len(e)] = torch.tensor(e), 1
            res = self.model(input_ids=x, attention_mask=mask)
            logits = (res.logits if hasattr(res, "logits") else res[0]).float()  # [B, T, 2]
            probs = torch.softmax(logits, dim=-1)[..., 1]
            for b, e in enumerate(encoded):
                at = (x[b, : len(e)] == self.separator_id).nonzero().flatten()
                out.append(probs[b, at])
            self.tokens_read += sum(len(e) for e in encoded)
        return out
