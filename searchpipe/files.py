"""File helpers: streaming checksums and durable writes (fsync of files and folders)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

BLOCK = 1 << 22  # 4 MiB: hashing memory stays flat whatever the file size


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in blocks (never the whole file at once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file, as an index manifest records them."""
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
