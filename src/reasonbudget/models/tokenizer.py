"""Tokenizers and chat templates through `transformers`, with a disk cache for GGUF-embedded vocabularies
(converting one takes seconds; reading the converted copy takes milliseconds)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers takes seconds to import: imported when a tokenizer is loaded
    from transformers import PreTrainedTokenizerBase


def cache_root() -> Path:
    return Path(os.environ.get("REASONBUDGET_CACHE", Path.home() / ".cache" / "reasonbudget"))


def gguf_cache_key(path: Path) -> str:
    """Name, size and a digest of the first and last MiB: stable when the same file is installed again (a
    fresh virtualenv gives it a new mtime), different for another file of the same name."""
    import hashlib

    size, chunk = path.stat().st_size, 1 << 20
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        f.seek(max(0, size - chunk))
        h.update(f.read(chunk))
    return f"{path.stem}-{size}-{h.hexdigest()[:12]}"


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """From an HF directory, or from the vocabulary inside a GGUF file."""
    from transformers import AutoTokenizer

    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path))
    cached = cache_root() / "tokenizers" / gguf_cache_key(path)
    if (cached / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(cached))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    try:
        tok.save_pretrained(str(cached))
    except OSError:
        pass  # a read-only cache only costs the conversion time
    return tok
