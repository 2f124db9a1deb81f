"""Where and how models compute: the device, the precision, and the CPU kernels that run.

``auto`` everywhere means "what this machine runs best": CUDA when a GPU is present, and on a
CPU bf16 where it has native bf16 dot products (AMX tiles or AVX512-BF16), else fp32. The
machine is read at run time, not assumed: the same install picks AMX on a Sapphire Rapids
Xeon, AVX512-BF16 on a Zen 4 EPYC and fp32 AVX2 on an older CPU, and ``ONEDNN_MAX_CPU_ISA``
(oneDNN's own cap, which PyTorch's matmuls obey) is honoured, so ``ONEDNN_MAX_CPU_ISA=AVX2``
gives the fp32 path on any CPU.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any

from searchpipe.errors import InputError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) that still allow its bf16 dot products, and those
# that allow AMX tiles; a cap below AVX512_CORE_BF16 leaves fp32 only
_BF16_CAPS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX10_2_512"}
_AMX_CAPS = {
    "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
    "AVX10_2_512_AMX_2",
}  # fmt: skip


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


@cache
def cpu_kernels() -> dict[str, Any]:
    """The CPU's matrix path, as detected now: which ISA the GEMMs run on and in what dtype.

    >>> cpu_kernels()["path"]  # doctest: +SKIP
    'bf16 on AMX tiles (oneDNN)'
    """
    import torch

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() or None
    uncapped = cap in (None, "ALL", "DEFAULT")
    has_amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    has_bf16 = has_amx or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    amx = has_amx and (uncapped or cap in _AMX_CAPS)
    bf16 = has_bf16 and (uncapped or cap in _AMX_CAPS | _BF16_CAPS)
    vector = torch.backends.cpu.get_cpu_capability()  # ATen's own kernels: AVX512, AVX2, ...
    if amx:
        isa, path = "amx-bf16", "bf16 on AMX tiles (oneDNN)"
    elif bf16:
        isa, path = "avx512-bf16", "bf16 on AVX512-BF16 (oneDNN)"
    else:
        gemm = (
            vector if uncapped or cap is None else cap
        )  # oneDNN's GEMMs run at its cap, if one is set
        isa = gemm.lower()
        path = f"fp32 on {gemm} (oneDNN)"
    return {
        "cpu": _cpu_name(),
        "isa": isa,
        "bf16": bf16,
        "path": path,
        "aten": vector,
        "onednn_max_cpu_isa": cap,
        "threads": torch.get_num_threads(),
    }


def bf16_supported(device: str = "cpu") -> bool:
    """True when ``device`` has native bf16 matrix units (AVX512-BF16/AMX on CPU, not capped
    by ``ONEDNN_MAX_CPU_ISA``)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(cpu_kernels()["bf16"])


def resolve_device(device: str = "auto") -> str:
    """``auto`` becomes ``cuda`` when a CUDA GPU is present, else ``cpu``.

    An explicit ``cuda`` without one is refused, not quietly run on the CPU.

    >>> resolve_device("cpu")
    'cpu'
    """
    import torch

    if device not in DEVICES:
        raise InputError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise InputError(
            "device cuda was asked for, but PyTorch sees no CUDA GPU (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use device auto "
            "or cpu, or install a CUDA build of torch"
        )
    return "cpu"


def compute_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision ('bf16' or 'fp32')."""
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``auto`` becomes ``bf16`` where the hardware runs it natively, else ``fp32``.

    An explicit ``bf16`` on hardware without it is refused rather than quietly run in fp32, so
    a setting the user asked for is never ignored.

    >>> resolve_precision("fp32")
    'fp32'
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32"
    if bf16_supported(device):
        return "bf16"
    if precision == "bf16":
        raise InputError(
            f"precision bf16 is not supported on this {device} (it needs AVX512-BF16 or AMX on "
            "a CPU, not capped below them by ONEDNN_MAX_CPU_ISA); use precision auto or fp32"
        )
    return "fp32"


def compute_summary(device: str = "auto") -> dict[str, Any]:
    """Where a model runs on this machine, for manifests, ``info`` and ``bench``: the device,
    its name, and on a CPU the matrix path (``cpu_kernels``) and whose attention and LayerNorm run.

    >>> compute_summary("cpu")["device"]
    'cpu'
    """
    resolved = resolve_device(device)
    if resolved == "cuda":
        import torch

        return {
            "device": "cuda",
            "name": torch.cuda.get_device_name(),
            "path": "bf16" if bf16_supported("cuda") else "fp32",
        }
    from searchpipe.models import kernels

    k = cpu_kernels()
    return {
        "device": "cpu", "name": k["cpu"], "path": k["path"], "threads": k["threads"],
        "kernels": kernels.summary(),
    }  # fmt: skip
