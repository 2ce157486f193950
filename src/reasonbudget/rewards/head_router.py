"""Arbitrage's router as a head over a frozen base model, for pairs whose models are too large to fine-tune here
(the Qwen pair on CPU): the router text (`rewards.router.router_text`: problem, annotated history, the draft's
current step) is read by the base model (the draft: the router decides before the target runs), and a small
MLP over the hidden states of a middle and the last layer at its last token predicts y_hat = P(the target's
step would score higher). It is trained like the fine-tuned router (`training.router`: oracle labels, the
majority class downsampled) and stored in a directory with `router.json` (`"kind": "head"`, the base model and
its shape, the pair) and `router_head.safetensors`.

A round's text extends the previous round's (the kept step joins the history), so the base keeps KV rows of the
texts it read (`rewards.step_states`, segment ends as step ends) and feeds each round only its new segments;
without it every round re-reads the problem and the whole history, and a run's router cost grows with the square
of its steps. The segments are encoded one by one (checked equal to encoding the whole text on the Qwen pair's
1905 labelled rounds, where the segments end in blank lines).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from reasonbudget.rewards.head_prm import StepHeadMLP, base_shape, padded_batches
from reasonbudget.rewards.router import CONFIG_FILE, RouterItem, router_segments, router_text

HEAD_FILE = "router_head.safetensors"


@torch.inference_mode()
def text_features(model, texts: Sequence[str], layers: Sequence[int], *, max_batch_tokens: int = 4096) -> Tensor:
    """[len(texts), len(layers) * d]: the base model's hidden states at each text's last token."""
    backend = model.backend
    encoded = [list(model.encode(t))[-(model.context_length - 1) :] or [0] for t in texts]
    out = torch.zeros(len(texts), len(layers) * backend.cfg.hidden_size)
    for chunk, x in padded_batches(encoded, max_batch_tokens):
        width = x.shape[1]
        forward_out = backend(x, backend.new_cache(len(chunk), width), torch.arange(len(chunk)),
                              hidden_layers=tuple(layers), hidden_only=True)
        last = torch.tensor([len(encoded[k]) - 1 for k in chunk])
        rows = torch.arange(len(chunk))
        feats = torch.cat([forward_out.hidden[layer][rows, last.to(forward_out.hidden[layer].device)].float()
                           for layer in layers], dim=-1)
        out[chunk] = feats.cpu()
    return out


class HeadRouter:
    """A head router directory (see the module docstring); `predict` like `rewards.router.StepRouter`."""

    def __init__(self, path: str | Path, *, base=None) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        self.config = json.loads((path / CONFIG_FILE).read_text())
        if base is None:
            from reasonbudget.models.registry import load_model

            base = load_model(self.config["base"], dtype="auto")
        if list(base_shape(base)) != list(self.config["base_shape"]):
            raise ValueError(f"the router head in {path} was trained on {self.config['base']} (hidden, layers, "
                             f"vocabulary = {tuple(self.config['base_shape'])}); the base model given is {base.name} "
                             f"({base_shape(base)})")
        self.base = base
        state = load_file(str(path / HEAD_FILE))
        self.head = StepHeadMLP(state["mean"].numel(), self.config["hidden"]).eval()
        self.head.load_state_dict(state)
        self.calls = self.tokens_read = 0
        self.num_params = base.num_params + sum(p.numel() for p in self.head.parameters())
        self.states = None
        if getattr(base, "kind", "runtime") == "runtime":
            from reasonbudget.rewards.step_states import StepStates

            self.states = StepStates(base, self.config["layers"])

    @property
    def separator(self) -> str:
        return self.config["separator"]

    def predict(self, items: Sequence[RouterItem]) -> list[float]:
        annotate = self.config.get("annotate", True)
        encoded = [self._encoded(router_segments(it, self.separator, annotate=annotate)) for it in items]
        kept = self.states is not None
        fits = [i for i, (ids, _) in enumerate(encoded) if kept and len(ids) < self.base.context_length]
        rest = sorted(set(range(len(items))) - set(fits))
        feats = torch.zeros(len(items), len(self.config["layers"]) * self.base.backend.cfg.hidden_size)
        if fits:
            before = self.states.tokens_fed
            for i, f in zip(fits, self.states.features([encoded[i] for i in fits])):
                feats[i] = f[-1]
            self.tokens_read += self.states.tokens_fed - before
        if rest:  # another backend, or a text past the context (read as `text_features` cuts it: its tail)
            feats[rest] = text_features(self.base, [router_text(items[i], self.separator, annotate=annotate)
                                                    for i in rest], self.config["layers"])
            self.tokens_read += sum(min(len(encoded[i][0]), self.base.context_length - 1) for i in rest)
        self.calls += len(items)
        with torch.no_grad():
            return torch.sigmoid(self.head(feats)).tolist() if len(items) else []

    def _encoded(self, segments: Sequence[str]) -> tuple[list[int], list[int]]:
        """The text's ids, segment by segment, and the index of each segment's last token."""
        ids: list[int] = []
        ends = []
        for seg in segments:
            ids += self.base.encode(seg)
            ends.append(len(ids) - 1)
        return ids, ends

    def forget(self) -> None:
        """Drop the kept states, so that a run is charged what it reads alone (`HeadPRM.forget`)."""
        if self.states is not None:
            self.states.clear()
