"""A process reward model for any model our runtime loads: a small trained head over a frozen base LM.

The base model reads the problem (in its chat template) and the steps so far, each step followed by the step
separator. At the last token of every step the head sees the base model's hidden states of a few layers
(optionally also three numbers from its log-probabilities of the step's tokens: the lowest, the mean, and the
lowest over the trace so far); an MLP maps them to P(the trace still reaches the right answer). It is trained with
binary cross-entropy on soft step labels from rollouts (`training.step_labels`, `training.head_prm`) and
calibrated on held-out problems (Platt scaling of its logit).

A directory holds `prm_head.safetensors` and `prm_head.json`: the base model's registry name and the shape it
was trained on (refused when the base model loaded now differs), the layers read, feature scaling and
calibration. The base model is loaded once per process, or shared with a policy that is the same model.

Scored as text (`score_steps`), a head over frozen states keeps the base's KV rows of the texts it read
(`rewards.step_states`), so a text that extends one read before costs only its new tokens; a head with
log-probability features or adapters re-reads the problem and every step so far. When the head reads hidden
states only (no log-probability features) and its base is the policy itself, it can instead read the policy's
own KV rows (`score_rows`, `reads_rows`): the state at a step's end is one token's forward past the row (the
pending last token, `Engine.look`), so scoring costs one token per particle and step instead of the whole
prefix. Both read the same states when the row holds the tokens the text encodes to.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from reasonbudget.types import StepSequence

HEAD_FILE, HEAD_CONFIG = "prm_head.safetensors", "prm_head.json"
LORA_PREFIX = "lora."
"""Tensors of a tuned head's adapters, saved beside the head's own in HEAD_FILE."""
LOGPROB_FEATURES = 3
LOGPROB_FLOOR = -20.0


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    """What a head was trained on; saved as `prm_head.json`."""

    base: str
    """Registry name (or path) of the base model whose hidden states the head reads."""
    base_shape: tuple[int, int, int]
    """(hidden size, layers, vocabulary) of that base model: a different model is refused."""
    layers: tuple[int, ...]
    hidden: int
    separator: str = "\n\n"
    logprobs: bool = True
    calibration: tuple[float, float] = (1.0, 0.0)
    """Platt scaling: P = sigmoid(a * logit + b)."""
    tuned_layers: int = 0
    """> 0: the top blocks carry LoRA adapters (`rewards.lora_top`), trained with the head, and the final layer's
    state is the adapted one. Such a head scores text only: the adapted blocks have no KV rows of their own."""
    lora_rank: int = 0
    lora_alpha: float = 0.0

    @property
    def reads_rows(self) -> bool:
        """Can it score the policy's own KV rows (one token per step)? Only a head over frozen hidden states."""
        return not self.logprobs and not self.tuned_layers

    @staticmethod
    def load(path: Path) -> HeadSpec:
        d = json.loads((path / HEAD_CONFIG).read_text())
        return HeadSpec(**{**d, "base_shape": tuple(d["base_shape"]), "layers": tuple(d["layers"]),
                           "calibration": tuple(d["calibration"])})

    def save(self, path: Path) -> None:
        (path / HEAD_CONFIG).write_text(json.dumps(asdict(self), indent=2))


def base_shape(model) -> tuple[int, int, int]:
    c = model.backend.cfg
    return (c.hidden_size, c.num_layers, c.vocab_size)


def default_layers(num_layers: int) -> tuple[int, ...]:
    """A middle layer and the final (normed) one: what a tuned head (its adapted final state) and a router read."""
    return (num_layers // 2, num_layers)


def probe_layer(num_layers: int) -> tuple[int, ...]:
    """The layer a head over frozen states reads by default: three quarters of the way up. Measured with
    `benchmarks/prm_curve.py --layer-sets` (100 GSM8K train problems, 64 test problems of Qwen2.5-Coder-0.5B's
    solutions, 3 seeds): step AUROC 0.702 (0.5B, layer 18 of 24) and 0.711 (1.5B, layer 21 of 28), against 0.673
    and 0.699 for the middle and final layers together; single layers below half way scored 0.64-0.66."""
    return (round(3 * num_layers / 4),)


class StepHeadMLP(nn.Module):
    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("std", torch.ones(d_in))
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.net((features - self.mean) / self.std)[..., 0]


def encode_steps(model, question: str, steps: Sequence[str], separator: str) -> tuple[list[int], list[int], int]:
    """Token ids of the prompt and the steps (each followed by the separator), the index of each step's last
    token, and where the first step starts."""
    from reasonbudget.models.registry import build_prompt

    ids = list(build_prompt(model, question))
    first = len(ids)
    ends = []
    for step in steps:
        ids += model.encode(step + separator)
        ends.append(len(ids) - 1)
    return ids, ends, first


def logprob_features(token_logprobs: Tensor, ends: Sequence[int], first: int) -> Tensor:
    """[num_steps, 3]: per step the lowest and mean log-probability of its tokens and the lowest so far, over
    -LOGPROB_FLOOR; token_logprobs[t] = log p(token t | tokens < t). Pure."""
    rows, running, start = [], 0.0, first
    for end in ends:
        lp = token_logprobs[start : end + 1].clamp(min=LOGPROB_FLOOR)
        low = float(lp.min()) if lp.numel() else 0.0
        running = min(running, low)
        rows.append([low, float(lp.mean()) if lp.numel() else 0.0, running])
        start = end + 1
    return torch.tensor(rows).reshape(-1, LOGPROB_FEATURES) / -LOGPROB_FLOOR


def padded_batches(seqs: Sequence[Sequence[int]], max_batch_tokens: int):
    """Yield (indices, right-padded [B, width] ids) over `seqs` sorted by length, each batch within
    `max_batch_tokens` padded positions (at least one sequence per batch)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j - i + 1) * len(seqs[order[j]]) <= max_batch_tokens:
            j += 1
        chunk = order[i:j]
        x = torch.zeros((len(chunk), max(len(seqs[k]) for k in chunk)), dtype=torch.long)
        for b, k in enumerate(chunk):
            x[b, : len(seqs[k])] = torch.tensor(list(seqs[k]), dtype=torch.long)
        yield chunk, x
        i = j


@torch.inference_mode()
def step_features(model, items: Sequence[tuple[str, Sequence[str]]], layers: Sequence[int], *, separator: str,
                  logprobs: bool = True, max_batch_tokens: int = 4096, top=None,
                  progress: Callable[[int], object] | None = None) -> list[Tensor]:
    """Per item: [num_steps, len(layers) * d (+ 3)] from one forward of the base model over its text. `top`: a
    `LoraTop` whose adapted final state stands in for the final layer's. `progress(k)`: k more items read."""
    backend = model.backend
    encoded = [encode_steps(model, q, s, separator) for q, s in items]
    limit = model.context_length
    out: list[Tensor] = [torch.zeros(0)] * len(items)
    for chunk, x in padded_batches([e[0][:limit] for e in encoded], max_batch_tokens):
        width = x.shape[1]
        cache = backend.new_cache(len(chunk), width)
        wanted = tuple(sorted({*layers, *((backend.cfg.num_layers,) if logprobs else ()),
                               *((top.start,) if top is not None else ())}))
        forward_out = backend(x, cache, torch.arange(len(chunk)), hidden_layers=wanted, hidden_only=True)
        if top is not None:
            forward_out.hidden[backend.cfg.num_layers] = top(forward_out.hidden[top.start])
        final = forward_out.hidden.get(backend.cfg.num_layers)
        for b, k in enumerate(chunk):
            ids, ends, first = encoded[k]
            ends = [e for e in ends if e < width]  # steps past the context are not scored
            if not ends:
                out[k] = torch.zeros(0)
                continue
            hid = torch.cat([forward_out.hidden[layer][b, ends].float() for layer in layers]
                            or [torch.zeros(len(ends), 0)], dim=-1)
            if logprobs:  # the logits of the steps' tokens only (a full [T, V] per row would be large)
                logits = backend.lm_head(final[b, first - 1 : ends[-1]]).float()
                lp = torch.zeros(ends[-1] + 1)
                target = x[b, first : ends[-1] + 1, None].to(logits.device)
                lp[first:] = torch.log_softmax(logits, -1).gather(-1, target)[:, 0].cpu()
                hid = torch.cat([logprob_features(lp, ends, first), hid.cpu()], dim=-1)
            out[k] = hid.cpu()
        if progress is not None:
            progress(len(chunk))
    return out


class HeadPRM:
    """`ProcessRewardModel` over a head directory (see the module docstring)."""

    def __init__(self, path: str | Path, *, base=None, rows: bool = False, reuse_prefixes: bool = True) -> None:
        """`rows`: score the policy's KV rows (`score_rows`; `base` must be the policy's model) instead of text.
        `reuse_prefixes`: the base keeps KV rows of the texts it read, so that a text extending one read before
        feeds only its new tokens (a head over frozen states; False: re-read every text whole)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / HEAD_CONFIG).exists() or not (path / HEAD_FILE).exists():
            raise ValueError(f"{path}: not a PRM head directory (needs {HEAD_CONFIG} and {HEAD_FILE}; "
                             "`reasonbudget train-prm` writes one)")
        self.spec = HeadSpec.load(path)
        if base is None:
            from reasonbudget.models.registry import load_model

            base = load_model(self.spec.base, dtype="auto")
        if base_shape(base) != self.spec.base_shape:
            raise ValueError(f"the PRM head in {path} was trained on {self.spec.base} (hidden, layers, vocabulary "
                             f"= {self.spec.base_shape}); the base model given is {base.name} "
                             f"({base_shape(base)}): use a head trained for it")
        self.base = base
        self.step_separator = self.spec.separator
        state = load_file(str(path / HEAD_FILE))
        self.top = None
        if self.spec.tuned_layers:
            from reasonbudget.rewards.lora_top import LoraTop

            self.top = LoraTop(base.backend, self.spec.tuned_layers, self.spec.lora_rank, self.spec.lora_alpha).eval()
            self.top.load_state_dict({k[len(LORA_PREFIX):]: v for k, v in state.items() if k.startswith(LORA_PREFIX)})
            state = {k: v for k, v in state.items() if not k.startswith(LORA_PREFIX)}
        self.head = StepHeadMLP(state["mean"].numel(), self.spec.hidden).eval()
        self.head.load_state_dict(state)
        self.tokens_read = 0
        if rows and not self.spec.reads_rows:
            raise ValueError(f"the PRM head in {path} reads log-probabilities of the whole step or LoRA-adapted "
                             "states: it scores text, not KV rows")
        self.reads_rows = rows
        self.states = None
        # also beside `rows`: a head reading the policy's rows still scores text written by another model (a
        # draft's steps, RSD/Arbitrage), which would otherwise be re-read whole every round (rows allocated lazily)
        if reuse_prefixes and self.spec.reads_rows and getattr(base, "kind", "runtime") == "runtime":
            from reasonbudget.rewards.step_states import StepStates

            self.states = StepStates(base, self.spec.layers)
        self.separator_ids = list(base.encode(self.spec.separator))
        self.lookahead_tokens = len(self.separator_ids) if rows else 0

    def logits(self, items: Sequence[StepSequence]) -> list[Tensor]:
        if self.states is not None:  # a head over frozen states: each prefix read once (`rewards.step_states`)
            before = self.states.tokens_fed
            feats = self.states.features([self._encoded(it) for it in items])
            self.tokens_read += self.states.tokens_fed - before
        else:
            feats = step_features(self.base, [(it.problem, it.steps) for it in items], self.spec.layers,
                                  separator=self.spec.separator, logprobs=self.spec.logprobs, top=self.top)
            self.tokens_read += sum(len(encode_steps(self.base, it.problem, it.steps, self.spec.separator)[0])
                                    for it in items)
        with torch.no_grad():
            return [self.head(f) if f.numel() else torch.zeros(0) for f in feats]

    def _encoded(self, item: StepSequence) -> tuple[list[int], list[int], int]:
        """Token ids within the base's context, the ends of the steps that fit (as `step_features` reads) and
        where the first step starts (the prompt before it is read once for all texts of a problem)."""
        ids, ends, first = encode_steps(self.base, item.problem, item.steps, self.spec.separator)
        limit = self.base.context_length
        return ids[:limit], [e for e in ends if e < limit], first

    def forget(self) -> None:
        """Drop the kept states of the texts read so far, so that a new run is charged what it reads alone (a
        benchmark sends the same problems to many runs; no run may read another's prefixes for free)."""
        if self.states is not None:
            self.states.clear()

    def score_steps(self, items: Sequence[StepSequence]) -> list[Tensor]:
        a, b = self.spec.calibration
        return [torch.sigmoid(a * z + b) for z in self.logits(items)]

    @torch.inference_mode()
    def score_rows(self, engine, rows: Sequence[int]) -> list[Tensor]:
        """The current step's score of each row, one [1] tensor each (NaN for a row with no room left): the head
        at the row's pending last token, a step's end. A row that ended its turn (end of sequence pending) is
        read as its text is, with the separator in place of the end-of-sequence token."""
        if engine.model is not self.base:
            raise ValueError(f"the PRM head reads the rows of its base model {self.spec.base}, not of {engine.model.name}")
        out: list[Tensor] = [torch.tensor([float("nan")]) for _ in rows]
        fits, feeds = [], []
        for i, r in enumerate(rows):
            h = engine.tokens(r)
            feed = self.separator_ids if h[-1] in self.base.eos_ids else [h[-1]]
            if len(h) - 1 + len(feed) <= engine.cache.capacity:
                fits.append(i)
                feeds.append(feed)
        if fits:
            hidden = engine.look(torch.tensor([rows[i] for i in fits]), feeds, self.spec.layers)
            x = torch.cat([hidden[layer].float().cpu() for layer in self.spec.layers], dim=-1)
            a, b = self.spec.calibration
            with torch.no_grad():
                p = torch.sigmoid(a * self.head(x) + b)
            for k, i in enumerate(fits):
                out[i] = p[k : k + 1]
            self.tokens_read += sum(map(len, feeds))
        return out
