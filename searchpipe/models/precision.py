"""Pick the compute precision: bf16 where the hardware runs it natively, else fp32."""

from __future__ import annotations

from typing import TYPE_CHECKING

from searchpipe.errors import InputError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_supported(device: str = "cpu") -> bool:
    """True when ``device`` has native bf16 matrix units (AVX512-BF16/AMX on CPU)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    cpu = torch.cpu
    return bool(
        getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )


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
            "a CPU); use precision auto or fp32"
        )
    return "fp32"
