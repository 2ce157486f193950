"""Arbitrage's router as a head over a trained PRM's step features (the testbed's PRM, `rewards.testbed_prm`).

The paper initialises its router from a PRM and fine-tunes it on oracle labels. Our testbed PRM is a frozen
verifier LM read by a small step head, so the router is that head's twin: the same step features (the
verifier's log-probabilities of the draft step's tokens, read after the problem and the accepted steps, and
its hidden state at the step's newline), a copy of the PRM's head with its output negated (so that before
training it predicts 1 - PRM(draft step), RSD's signal) and a linear term over the annotation (the share of
accepted steps the target wrote, whether it wrote the last one, how many there are), initialised at zero.
Training on the oracle labels then teaches it where the target would also do better.

Why not the fine-tuned classifier (`rewards.router.StepRouter`): measured on 638 held-out rounds of the v2
pair, its AUROC was 0.79 (Acc0 0.66, Acc1 0.83) against 0.96 for 1 - PRM(draft step) itself, for the reason the
PRM's docstring gives: the check of `a op k = r` lives in the verifier's surprise at the written digits, which
a classifier over the last token's hidden state has to relearn from a few thousand labelled rounds.

A router directory holds `router.json` (`"kind": "prm-features"`, the PRM directory relative to it, the PRM's
digest, the pair) and `router_head.safetensors`. A router whose PRM changed is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from reasonbudget.rewards.router import CONFIG_FILE, RouterItem

HEAD_FILE = "router_head.safetensors"
KIND = "prm-features"
ANNOTATION_FEATURES = 3
STEPS_SCALE = 24.0  # the labelling loop's max_steps: the step count as a feature in [0, 1]


def annotation_features(history: Sequence[tuple[str, int]]) -> list[float]:
    """[share of accepted steps the target wrote, 1 if it wrote the last one, steps / STEPS_SCALE]; pure."""
    writers = [int(w) for _, w in history]
    return [sum(writers) / len(writers) if writers else 0.0, float(writers[-1]) if writers else 0.0,
            len(writers) / STEPS_SCALE]


def prm_digest(prm_dir: Path) -> str:
    """What identifies the PRM whose features a router reads: its LM's and its head's weights."""
    h = hashlib.sha256()
    for name in ("model.safetensors", "step_head.safetensors"):
        h.update((prm_dir / name).read_bytes())
    return h.hexdigest()[:16]


class PRMFeatureHead(nn.Module):
    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.step = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.annotation = nn.Linear(ANNOTATION_FEATURES, 1)

    def forward(self, features: Tensor, annotation: Tensor) -> Tensor:
        """Escalation logits (y_hat = sigmoid)."""
        return self.step(features)[..., 0] + self.annotation(annotation)[..., 0]

    @classmethod
    def from_prm_head(cls, prm_head: nn.Module) -> PRMFeatureHead:
        """The PRM's step head (`testbed_prm.StepHead`) negated: logit(y_hat) = -logit(PRM score)."""
        first, last = prm_head.net[0], prm_head.net[2]
        head = cls(first.in_features, first.out_features)
        head.step[0] = copy.deepcopy(first)
        head.step[2] = copy.deepcopy(last)
        with torch.no_grad():
            head.step[2].weight.neg_()
            head.step[2].bias.neg_()
            head.annotation.weight.zero_()
            head.annotation.bias.zero_()
        return head


def router_inputs(prm, items: Sequence[RouterItem]) -> tuple[Tensor, Tensor]:
    """([n, PRM features], [n, ANNOTATION_FEATURES]): the PRM's features of each item's current draft step (its
    last line) read after the accepted steps, and the annotation."""
    feats = prm.score_features([(it.problem, tuple(s for s, _ in it.history) + it.draft) for it in items])
    width = prm.head.net[0].in_features
    # an item without any step (an empty draft, no history) reads as zeros, as the PRM scores it 0
    x = torch.stack([f[-1] if len(f) else torch.zeros(width) for f in feats]) if items else torch.zeros(0, width)
    a = torch.tensor([annotation_features(it.history) for it in items]).view(len(items), ANNOTATION_FEATURES)
    return x, a


class PRMFeatureRouter:
    """A `prm-features` router directory; `predict` like `rewards.router.StepRouter`."""

    def __init__(self, path: str | Path, *, prm=None) -> None:
        from safetensors.torch import load_file

        from reasonbudget.rewards.testbed_prm import TestbedPRM

        path = Path(path)
        self.config = json.loads((path / CONFIG_FILE).read_text())
        prm_dir = (path / self.config["prm"]).resolve()
        if not (prm_dir / "step_head.safetensors").exists():
            raise FileNotFoundError(f"the router at {path} reads the PRM at {prm_dir}, which is missing: retrain the "
                                    "router with `reasonbudget train-router`")
        if prm_digest(prm_dir) != self.config["prm_digest"]:
            raise ValueError(f"the router at {path} was trained on the features of another PRM than the one at "
                             f"{prm_dir} (digest {self.config['prm_digest']}, now {prm_digest(prm_dir)}): retrain "
                             "the router with `reasonbudget train-router`")
        self.prm = prm if prm is not None else TestbedPRM(prm_dir)
        state = load_file(str(path / HEAD_FILE))
        self.head = PRMFeatureHead(state["step.0.weight"].shape[1], state["step.0.weight"].shape[0]).eval()
        self.head.load_state_dict(state)
        self.calls = 0
        self.num_params = (sum(p.numel() for p in self.prm.lm.parameters())
                           + sum(p.numel() for p in self.head.parameters()))

    @property
    def separator(self) -> str:
        return self.config["separator"]

    @property
    def tokens_read(self) -> int:
        return self.prm.tokens_read

    def forget(self) -> None:
        """Drop the kept states of the texts read so far, so that a new run is charged what it reads alone (a
        benchmark sends the same problems to many runs; no run may read another's prefixes for free)."""
        self.prm.forget()

    @torch.inference_mode()
    def predict(self, items: Sequence[RouterItem]) -> list[float]:
        """y_hat in [0, 1] per item: P(the target's step would score higher)."""
        self.calls += len(items)
        if not items:
            return []
        y = torch.sigmoid(self.head(*router_inputs(self.prm, items))).tolist()
        return [v if it.draft else 1.0 for v, it in zip(y, items)]  # no draft step: the target writes
