"""Our CPU inference kernels (``kernels.c``): attention and LayerNorm, where they are the faster.

PyTorch's CPU flash attention is slow at the head size of small BERTs (Dh = 32: under 100
GFLOP/s on an AVX512-BF16 EPYC, a third of a MiniLM forward), and it wants q, k and v
permuted out of the fused projection and the output permuted back. ``kernels.c`` reads
the (B, T, 3, H, Dh) projection as it is, skips padded queries and writes (B, T, D). Its
LayerNorm takes 40-60% of the time of PyTorch's on bf16 rows (12 per MiniLM forward).

The kernels are compiled on first use by the machine's C compiler with ``-march=native`` into
``$XDG_CACHE_HOME/searchpipe/kernels/`` (the file name hashes the source, the flags and what
``-march=native`` means to that compiler on this CPU, its version and ISA macros, so a cache
shared by different CPUs never runs a foreign build), and linked against the OpenMP runtime
torch already loaded, so both share one thread pool. They are used where they pay: the first
encoder in a given dtype, head count and head size times ours against PyTorch's (attention
and two LayerNorms, a layer's worth) on a (8, 256) batch and keeps the faster (``choose``);
the choice is recorded beside the compiled library, so every later process on the machine
makes the same one and an index and its queries are embedded by the same arithmetic. On a
CPU without AVX-512, without a C compiler, for head sizes that are not a multiple of 32, or
on a GPU, PyTorch's kernels run. ``SEARCHPIPE_KERNELS=torch`` or ``=ours`` overrides the
choice.

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

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-strict-aliasing", "-shared", "-fPIC", "-std=c11")
ENV = "SEARCHPIPE_KERNELS"  # auto (the default) | ours | torch
CHOICES = ("auto", "ours", "torch")
#: what ``choose`` decided in this process, per model shape ("bf16, 12 x 32" -> "ours")
CHOSEN: dict[str, str] = {}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "searchpipe" / "kernels"


def _compile(cc: str, target: Path) -> str | None:
    """Build the kernels into ``target`` (written under a temporary name, then moved, so a
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
    """The compiled kernels and where they lie, or None and why they cannot run here."""
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
        target = folder / f"kernels-{key}.so"
        if not target.is_file():
            try:
                error = _compile(cc, target)
            except OSError as e:  # the cache folder cannot be written: try the next
                error = str(e)
            if error:
                log.info("kernels: %s", error)
                continue
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as e:  # e.g. a folder mounted noexec
            error = f"cannot load {target}: {e}"
            log.info("kernels: %s", error)
            continue
        fn = lib.searchpipe_attention
        fn.restype = ctypes.c_int
        fn.argtypes = (
            [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_float] + [ctypes.c_int] * 2
        )
        norm = lib.searchpipe_layer_norm
        norm.restype = ctypes.c_int
        norm.argtypes = (
            [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_float] + [ctypes.c_int] * 2
        )
        return lib, str(target)
    return None, f"the kernels could not be built or loaded ({error})"


def supported(dtype: torch.dtype, head_dim: int, device: str = "cpu") -> bool:
    """Whether our kernels run this case here (they may still lose to PyTorch's: ``choose``).
    A head size that is a multiple of 32 makes the model width one of 16, as LayerNorm needs."""
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


class LayerNorm:
    """``nn.LayerNorm`` over the last axis by our kernel, for contiguous float32/bfloat16 input
    in the module's dtype (its weights are read in place)."""

    def __init__(self, norm: torch.nn.LayerNorm) -> None:
        assert norm.weight is not None and norm.bias is not None
        self.weight, self.bias = norm.weight.detach(), norm.bias.detach()
        self.eps = float(norm.eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lib, _ = library()
        assert lib is not None and x.is_contiguous() and x.dtype == self.weight.dtype
        D = x.shape[-1]
        y = torch.empty_like(x)
        rc = lib.searchpipe_layer_norm(
            x.data_ptr(), self.weight.data_ptr(), self.bias.data_ptr(), y.data_ptr(),
            x.numel() // D, D, self.eps, int(x.dtype == torch.bfloat16), torch.get_num_threads(),
        )  # fmt: skip
        assert rc == 0, f"layer norm kernel refused width {D}"
        return y


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
    """``"ours"`` or ``"torch"``: whose attention and LayerNorm this process runs for this
    shape of model.

    ``SEARCHPIPE_KERNELS`` decides when set; otherwise ours, where they run, are timed against
    PyTorch's on a (8, 256) batch with padding, and the faster is kept.
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
    if wanted == "torch" or not supported(dtype, head_dim, device):
        if wanted == "ours":
            log.warning("%s=ours, but our kernels cannot run here (%s)", ENV, why_not())
        return "torch"
    if wanted == "ours":
        return "ours"
    # the first timing on this machine decides for every later process: an index and its
    # queries are then embedded by the same arithmetic, whichever process runs them
    record = Path(library()[1] + ".choices.json")
    shape = f"{dtype}, {n_heads} x {head_dim}, {torch.get_num_threads()} threads"
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get(shape) in ("ours", "torch"):
        return str(known[shape])
    gen = torch.Generator().manual_seed(0)
    D = n_heads * head_dim
    qkv = torch.randn((8, 256, 3, n_heads, head_dim), generator=gen).to(dtype)
    x = torch.randn((8, 256, D), generator=gen).to(dtype)
    lengths = torch.tensor([256, 256, 240, 200, 180, 160, 128, 100])
    mask = (torch.arange(256)[None, :] < lengths[:, None])[:, None, None, :]
    norm = torch.nn.LayerNorm(D, dtype=dtype)
    fast_norm = LayerNorm(norm)

    def layer(fast: bool) -> None:  # a layer's attention and its two LayerNorms
        _ = attention(qkv, lengths) if fast else sdpa(qkv, mask)
        for _ in range(2):
            _ = fast_norm(x) if fast else norm(x)

    with torch.inference_mode():
        ours = _timed(lambda: layer(True))
        theirs = _timed(lambda: layer(False))
    choice = "ours" if ours < theirs else "torch"
    log.info(
        "kernels (%s): ours %.1f ms, PyTorch's %.1f ms on (8, 256): %s (recorded in %s)",
        shape, 1000 * ours, 1000 * theirs, choice, record,
    )  # fmt: skip
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({**known, shape: choice}, indent=1))
        os.replace(tmp, record)
    except OSError as e:  # a read-only cache: the choice holds for this process only
        log.info("kernels: could not record the choice in %s (%s)", record, e)
    return choice


def why_not() -> str:
    """Why our kernels do not run here, or '' when they do."""
    lib, where = library()
    return "" if lib is not None else where


def summary() -> str:
    """The kernels for ``info`` and ``bench``: what this process chose per model shape, or,
    before any model loaded, whether ours can run here."""
    reason = why_not()
    if CHOSEN:
        names = {"ours": "searchpipe kernels", "torch": "PyTorch's"}
        text = "; ".join(f"{names[c]} ({shape})" for shape, c in CHOSEN.items())
        return f"{text}; ours: {reason}" if reason else text
    return "PyTorch's (" + reason + ")" if reason else "searchpipe kernels where they time faster"
