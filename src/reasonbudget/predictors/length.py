"""Budget Guidance's remaining-length predictor: all hidden states of the frozen LM at one position, read as a
short sequence (layer axis, no position embeddings, a learned CLS vector in front), a small transformer
encoder, and two vocabulary heads giving every candidate next token a Gamma(shape, rate) over log(L + 1).

Sizes: the reference uses a BERT-base encoder (768 wide, 12 layers) and full-rank heads; small LMs get a
small encoder and, optionally, low-rank heads (width -> rank -> vocabulary), which is where most of the
parameters sit for large vocabularies. Training gathers only the head rows of the actual next tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

CONFIG_FILE, WEIGHTS_FILE = "length_predictor.json", "length_predictor.safetensors"


@dataclass(frozen=True, kw_only=True)
class LengthPredictorConfig:
    lm_hidden_size: int
    num_states: int
    """Hidden states read per position: the LM's layers + 1 (embeddings ... final norm)."""
    vocab_size: int
    width: int = 768
    layers: int = 12
    heads: int = 12
    ffn: int = 3072
    dropout: float = 0.1
    head_rank: int | None = None
    """None: full-rank heads (the reference); else width -> rank -> vocabulary."""
    lm_fingerprint: str = ""
    """Which LM the predictor reads (see `lm_fingerprint`); others are refused."""
    min_rate: float = 10.0
    """Trusted-row filter for guidance: the reference's 10, or lower when the rates the predictor gives the
    tokens it was trained on are lower (short traces); set by the trainer."""


@dataclass(frozen=True)
class LMDims:
    num_layers: int
    hidden_size: int
    vocab_size: int


def lm_dims(model) -> LMDims:
    """Shapes of a LoadedModel, from our runtime's config or the transformers fallback's."""
    if hasattr(model.backend, "cfg"):
        c = model.backend.cfg
        return LMDims(c.num_layers, c.hidden_size, c.vocab_size)
    c = model.backend.model.config
    return LMDims(c.num_hidden_layers, c.hidden_size, c.vocab_size)


def lm_fingerprint(model) -> str:
    """Identity of a LoadedModel's weights, cheap enough for 7B models: shapes plus a hash of a few embedding
    rows rounded to bfloat16, so the same weights loaded as float32 or bfloat16 give the same identity."""
    return _fingerprint(model, torch.bfloat16)


def lm_fingerprints(model) -> set[str]:
    """Every identity a companion trained for these weights may carry: today's and the float32 hash that
    companions trained before it carry."""
    return {lm_fingerprint(model), _fingerprint(model, torch.float32)}


def _fingerprint(model, dtype: torch.dtype) -> str:
    backend = model.backend
    emb = backend.embed if hasattr(backend, "cfg") else backend.model.get_input_embeddings().weight
    dims = (emb.shape[0], emb.shape[1], len(hidden_layer_ids(model)))
    rows = emb[: min(64, emb.shape[0])].detach().to(dtype).float().contiguous()
    tag = "" if dtype == torch.float32 else "bf16:"
    return f"{tag}{dims[0]}x{dims[1]}x{dims[2]}:" + hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]


def hidden_layer_ids(model) -> tuple[int, ...]:
    return tuple(range(lm_dims(model).num_layers + 1))


class VocabHead(nn.Module):
    def __init__(self, width: int, vocab: int, rank: int | None) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False) if rank else None
        self.out = nn.Linear(rank or width, vocab, bias=False)

    def forward(self, h: Tensor) -> Tensor:  # [N, width] -> [N, V]
        return self.out(self.down(h) if self.down is not None else h)

    def gather(self, h: Tensor, tokens: Tensor) -> Tensor:  # [N, width], [N] -> [N]: only the needed rows
        z = self.down(h) if self.down is not None else h
        return (self.out.weight[tokens] * z).sum(-1)


class LengthPredictor(nn.Module):
    def __init__(self, cfg: LengthPredictorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cls = nn.Parameter(torch.zeros(cfg.lm_hidden_size))
        self.proj = nn.Linear(cfg.lm_hidden_size, cfg.width)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, cfg.ffn, cfg.dropout, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.shape_head = VocabHead(cfg.width, cfg.vocab_size, cfg.head_rank)
        self.rate_head = VocabHead(cfg.width, cfg.vocab_size, cfg.head_rank)

    def summary(self, states: Tensor) -> Tensor:
        """states [N, num_states, d] -> [N, width] (the CLS output)."""
        x = torch.cat([self.cls.expand(states.shape[0], 1, -1).to(states.dtype), states], dim=1)
        return self.encoder(self.proj(x))[:, 0]

    def forward(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """Gamma shape and rate for every vocabulary token: ([N, V], [N, V])."""
        h = self.summary(states)
        return nn.functional.softplus(self.shape_head(h)), nn.functional.softplus(self.rate_head(h))

    def gather(self, states: Tensor, next_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Shape and rate of the actual next tokens only ([N], [N]): the training path."""
        h = self.summary(states)
        return (nn.functional.softplus(self.shape_head.gather(h, next_tokens)),
                nn.functional.softplus(self.rate_head.gather(h, next_tokens)))

    def save(self, out: Path) -> None:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=2))


class PredictorError(ValueError):
    """A predictor that cannot be used: missing files, or trained for another model."""


def load_predictor(path: str | Path, model=None) -> LengthPredictor:
    """Load from a directory; with `model`, refuse a predictor trained for different weights."""
    from safetensors.torch import load_file

    path = Path(path)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
    if missing:
        raise PredictorError(f"length predictor at {path}: missing {', '.join(missing)} "
                             f"(train one with `reasonbudget train-predictor --model NAME --out {path}`)")
    cfg = LengthPredictorConfig(**json.loads((path / CONFIG_FILE).read_text()))
    if model is not None and cfg.lm_fingerprint:
        have = lm_fingerprint(model)
        if cfg.lm_fingerprint not in lm_fingerprints(model):
            raise PredictorError(f"length predictor at {path} was trained for another model "
                                 f"(fingerprint {cfg.lm_fingerprint}, {model.name} is {have}); "
                                 f"train one for {model.name} with `reasonbudget train-predictor`")
    predictor = LengthPredictor(cfg)
    predictor.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    return predictor.eval()
