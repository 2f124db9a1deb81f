"""Our AVX-512 attention and LayerNorm kernels against PyTorch's."""

from __future__ import annotations

import pytest
import torch
from test_encoder import padded_batch
from test_inference import LENGTHS

from searchpipe.models import kernels
from searchpipe.models.bert_io import load_encoder
from searchpipe.models.inference import InferenceEncoder, prefix_lengths

pytestmark = pytest.mark.skipif(
    kernels.library()[0] is None,
    reason=f"our kernels do not run on this machine: {kernels.why_not()}",
)


def reference(qkv: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """fp32 SDPA over the same (upcast) inputs, masked by length."""
    T = qkv.shape[1]
    mask = (torch.arange(T)[None, :] < lengths[:, None])[:, None, None, :]
    return kernels.sdpa(qkv.float(), mask)


@pytest.mark.parametrize(
    "shape",
    [(3, 7, 2, 32), (4, 300, 12, 32), (2, 65, 4, 64), (1, 512, 12, 32), (5, 1, 3, 32)],
    ids=str,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_matches_sdpa(shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    B, T, H, Dh = shape
    gen = torch.Generator().manual_seed(sum(shape))
    qkv = (3 * torch.randn((B, T, 3, H, Dh), generator=gen)).to(dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T  # a full row and (where T > 1) ragged ones, down to a single token
    lengths[-1] = 1
    got = kernels.attention(qkv, lengths)
    assert got.dtype == dtype and got.shape == (B, T, H * Dh)
    real = torch.arange(T)[None, :] < lengths[:, None]
    expected = reference(qkv, lengths)
    # fp32: summation order and our exp (relative error ~2e-7, on scores of up to ~50 here);
    # bf16: the output's own rounding (8 bits of mantissa)
    scale = expected[real].abs().max().item()
    tol = (1e-5 if dtype == torch.float32 else 2**-7) * scale
    assert (got.float() - expected)[real].abs().max().item() <= tol
    assert not got[~real].any()  # padded query rows are written as zero


def test_encoder_with_kernel_matches_our_encoder(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The whole fused encoder on our kernels, against our reference encoder (fp32)."""
    kernels.choose.cache_clear()
    monkeypatch.setenv(kernels.ENV, "ours")
    try:
        ours = load_encoder("minilm")
        batch = padded_batch(LENGTHS, 30522, seed=3)
        fast = InferenceEncoder(load_encoder("minilm"), torch.float32)
        assert fast.kernels == "ours"
        with torch.no_grad():
            expected = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        got = fast(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    finally:
        kernels.choose.cache_clear()
    real = batch["attention_mask"].bool()
    assert (got - expected)[real].abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layer_norm_matches_torch(dtype: torch.dtype) -> None:
    """Against float64 LayerNorm of the same inputs: fp32 to its summation error, bf16 to its
    rounding. A row far off zero mean tests the two-pass variance (E[x^2] - mean^2 in fp32 is
    off by 1e-2 of the output scale there, ours by under 1e-5)."""
    gen = torch.Generator().manual_seed(5)
    norm = torch.nn.LayerNorm(384, eps=1e-12)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(384, generator=gen))
        norm.bias.copy_(torch.randn(384, generator=gen))
    x = torch.randn((3, 70, 384), generator=gen) * torch.logspace(-1, 2, 70)[None, :, None]
    x[1] += 50.0  # mean 50, spread 0.1 to 100 per row
    x = x.to(dtype)
    with torch.no_grad():
        expected = norm.double()(x.double())
        got = kernels.LayerNorm(norm.to(dtype))(x)
    assert got.dtype == dtype and got.shape == x.shape
    tol = (2e-5 if dtype == torch.float32 else 2**-7) * expected.abs().max().item()
    assert (got.float() - expected).abs().max().item() <= tol


def test_choice_follows_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for wanted in ("torch", "ours"):
        kernels.choose.cache_clear()
        monkeypatch.setenv(kernels.ENV, wanted)
        assert kernels.choose(torch.bfloat16, 12, 32) == wanted
    kernels.choose.cache_clear()
    assert kernels.choose(torch.bfloat16, 12, 48) == "torch"  # a head size ours do not run
    monkeypatch.delenv(kernels.ENV)
    kernels.choose.cache_clear()
    assert kernels.choose(torch.float32, 12, 32) in ("ours", "torch")  # timed here
    kernels.choose.cache_clear()


def test_prefix_lengths_only_for_right_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert prefix_lengths(mask, 3, 4).tolist() == [3, 1, 4]  # type: ignore[union-attr]
    assert prefix_lengths(None, 2, 5).tolist() == [5, 5]  # type: ignore[union-attr]
    assert prefix_lengths(torch.tensor([[0, 1, 1], [1, 1, 1]]), 2, 3) is None  # left padding
