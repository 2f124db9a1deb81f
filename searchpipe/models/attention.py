"""Attention for CPU inference: our AVX-512 kernel (``attention.c``) where it is the faster.

PyTorch's CPU flash attention is slow at the head size of small BERTs (Dh = 32: under 100
GFLOP/s on an AVX512-BF16 EPYC, a third of a MiniLM forward), and it wants q, k and v
permuted out of the fused projection and the output permuted back. ``attention.c`` reads
the (B, T, 3, H, Dh) projection as it is, skips padded queries and writes (B, T, D).

The kernel is compiled on first use by the machine's C compiler with ``-march=native`` into
``$XDG_CACHE_HOME/searchpipe/kernels/`` (the file name hashes the source, the flags and what
``-march=native`` means to that compiler on this CPU, its version and ISA macros, so a cache
shared by different CPUs never runs a foreign build), and
linked against the OpenMP runtime torch already loaded, so both share one thread pool. The
kernel is used where it pays: the first encoder in a given dtype, head count and head size
times both kernels on a (8, 256) batch and keeps the faster (``choose``); the choice is
recorded beside the compiled kernel, so every later process on the machine makes the same
one and an index and its queries are embedded by the same arithmetic. On a CPU without
AVX-512, without a C compiler, for head sizes that are not a multiple of 32, or on a GPU,
PyTorch's kernel runs. ``SEARCHPIPE_ATTENTION=sdpa`` or ``=kernel`` overrides the choice.

>>> y = attention(qkv, lengths)  # (B, T, 3, H, Dh) bf16, (B,) int64 -> (B, T, H * Dh)  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("attention.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-strict-aliasing", "-shared", "-fPIC", "-std=c11")
ENV = "SEARCHPIPE_ATTENTION"  # auto (the default) | kernel | sdpa
CHOICES = ("auto", "kernel", "sdpa")
#: what ``choose`` decided in this process, per model shape ("bf16, 12 x 32" -> "kernel")
CHOSEN: dict[str, str] = {}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "searchpipe" / "kernels"


def _compile(cc: str, target: Path) -> str | None:
    """Build the kernel into ``target`` (written under a temporary name, then moved, so a
    killed build never leaves a half-written library); None, or why it failed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run(
            [cc, *FLAGS, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return f"{cc} failed: {lines[0][:200] if lines else proc.returncode}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"{cc} could not run: {e}"
    finally:
        tmp.unlink(missing_ok=True)


@cache
def library() -> tuple[ctypes.CDLL | None, str]:
    """The compiled kernel and where it lies, or None and why it cannot run here."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None, f"this CPU has no AVX-512 ({torch.backends.cpu.get_cpu_capability()})"
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler (cc or gcc) on PATH"
    try:  # what -march=native means to this compiler on this CPU: its version and ISA macros
        native = subprocess.run(
            [cc, "-march=native", "-dM", "-E", "-"], input="", capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{cc} could not run: {e}"
    if "__AVX512F__" not in native.stdout:
        return None, f"{cc} does not target AVX-512 here (-march=native)"
    key = hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), native.stdout.encode(), " ".join(FLAGS).encode()])
    ).hexdigest()[:16]
    error: str | None = None
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / "searchpipe-kernels"):
        target = folder / f"attention-{key}.so"
        if not target.is_file():
            try:
                error = _compile(cc, target)
            except OSError as e:  # the cache folder cannot be written: try the next
                error = str(e)
            if error:
                log.info("attention kernel: %s", error)
                continue
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as e:  # e.g. a folder mounted noexec
            error = f"cannot load {target}: {e}"
            log.info("attention kernel: %s", error)
            continue
        fn = lib.searchpipe_attention
        fn.restype = ctypes.c_int
        fn.argtypes = (
            [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_float] + [ctypes.c_int] * 2
        )
        return lib, str(target)
    return None, f"the kernel could not be built or loaded ({error})"


def supported(dtype: torch.dtype, head_dim: int, device: str = "cpu") -> bool:
    """Whether the kernel runs this case here (it may still lose to PyTorch's: ``choose``)."""
    return (
        device == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and head_dim % 32 == 0
        and library()[0] is not None
    )


def attention(qkv: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Softmax attention of each row's first ``lengths[b]`` tokens, scaled by 1/sqrt(Dh).

    ``qkv`` (B, T, 3, H, Dh), contiguous, float32 or bfloat16; ``lengths`` (B,) int64.
    Returns (B, T, H * Dh) in ``qkv``'s dtype; rows at and after ``lengths[b]`` are zero.
    """
    lib, _ = library()
    assert lib is not None and qkv.is_contiguous() and lengths.dtype == torch.int64
    B, T, _, H, Dh = qkv.shape
    lengths = lengths.contiguous()
    out = torch.empty((B, T, H * Dh), dtype=qkv.dtype)
    rc = lib.searchpipe_attention(
        qkv.data_ptr(), lengths.data_ptr(), out.data_ptr(), B, T, H, Dh, Dh**-0.5,
        int(qkv.dtype == torch.bfloat16), torch.get_num_threads(),
    )  # fmt: skip
    assert rc == 0, f"attention kernel refused shape {tuple(qkv.shape)}"
    return out


def sdpa(qkv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The same through PyTorch's ``scaled_dot_product_attention`` (any device, any mask)."""
    B, T, _, H, Dh = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, Dh)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, Dh)
    return y.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, D)


def sdpa_first(qkv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of the first position only, (B, 1, H * Dh): what a [CLS] classifier reads."""
    B, T, _, H, Dh = qkv.shape
    q = qkv[:, :1, 0].transpose(1, 2)  # (B, H, 1, Dh)
    k, v = (qkv[:, :, i].transpose(1, 2) for i in (1, 2))  # 2 x (B, H, T, Dh)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, 1, Dh)
    return y.transpose(1, 2).reshape(B, 1, H * Dh)  # (B, 1, D)


def _timed(fn: object, reps: int = 3) -> float:
    assert callable(fn)
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@cache
def choose(dtype: torch.dtype, n_heads: int, head_dim: int, device: str = "cpu") -> str:
    """``"kernel"`` or ``"sdpa"``: which attention this process runs for this shape of model.

    ``SEARCHPIPE_ATTENTION`` decides when set; otherwise the kernel, where it runs, is timed
    against PyTorch's on a (8, 256) batch with padding, and the faster is kept.
    """
    choice = _choose(dtype, n_heads, head_dim, device)
    if device == "cpu":
        CHOSEN[f"{str(dtype).removeprefix('torch.')}, {n_heads} x {head_dim}"] = choice
    return choice


def _choose(dtype: torch.dtype, n_heads: int, head_dim: int, device: str) -> str:
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in CHOICES:
        log.warning("%s=%r is not one of %s; using auto", ENV, wanted, ", ".join(CHOICES))
        wanted = "auto"
    if wanted == "sdpa" or not supported(dtype, head_dim, device):
        if wanted == "kernel":
            log.warning("%s=kernel, but the kernel cannot run here (%s)", ENV, why_not())
        return "sdpa"
    if wanted == "kernel":
        return "kernel"
    # the first timing on this machine decides for every later process: an index and its
    # queries are then embedded by the same arithmetic, whichever process runs them
    record = Path(library()[1] + ".choices.json")
    shape = f"{dtype}, {n_heads} x {head_dim}, {torch.get_num_threads()} threads"
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get(shape) in ("kernel", "sdpa"):
        return str(known[shape])
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn((8, 256, 3, n_heads, head_dim), generator=gen).to(dtype)
    lengths = torch.tensor([256, 256, 240, 200, 180, 160, 128, 100])
    mask = (torch.arange(256)[None, :] < lengths[:, None])[:, None, None, :]
    with torch.inference_mode():
        ours = _timed(lambda: attention(qkv, lengths))
        theirs = _timed(lambda: sdpa(qkv, mask))
    choice = "kernel" if ours < theirs else "sdpa"
    log.info(
        "attention (%s): kernel %.1f ms, PyTorch %.1f ms on (8, 256): %s (recorded in %s)",
        shape, 1000 * ours, 1000 * theirs, choice, record,
    )  # fmt: skip
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({**known, shape: choice}, indent=1))
        os.replace(tmp, record)
    except OSError as e:  # a read-only cache: the choice holds for this process only
        log.info("attention: could not record the choice in %s (%s)", record, e)
    return choice


def why_not() -> str:
    """Why the kernel does not run here, or '' when it does."""
    lib, where = library()
    return "" if lib is not None else where


def summary() -> str:
    """The attention path for ``info`` and ``bench``: what this process chose per model shape,
    or, before any model loaded, whether the kernel can run here."""
    reason = why_not()
    if CHOSEN:
        names = {"kernel": "searchpipe kernel", "sdpa": "PyTorch SDPA"}
        text = "; ".join(f"{names[c]} ({shape})" for shape, c in CHOSEN.items())
        return f"{text}; our kernel: {reason}" if reason else text
    return "PyTorch SDPA (" + reason + ")" if reason else "searchpipe kernel where it times faster"
