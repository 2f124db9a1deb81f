"""Where models run: device selection and the CPU kernel path, read from the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from searchpipe.cli import main as cli
from searchpipe.errors import InputError
from searchpipe.models import precision as compute


def test_auto_picks_cuda_when_present_and_cpu_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute.resolve_device("auto") == "cpu"
    assert compute.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute.resolve_device("auto") == "cuda"
    assert compute.resolve_device("cuda") == "cuda"
    assert compute.resolve_device("cpu") == "cpu"  # an explicit cpu stays on the CPU


def test_explicit_cuda_without_a_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA GPU.*use device auto or cpu"):
        compute.resolve_device("cuda")
    with pytest.raises(InputError, match="not one of auto, cpu, cuda"):
        compute.resolve_device("tpu")


def _kernels(env: dict[str, str]) -> dict:
    """cpu_kernels() and resolve_precision('auto') in a fresh process with ``env`` set."""
    code = (
        "import json; from searchpipe.models.precision import cpu_kernels, resolve_precision; "
        "print(json.dumps({**cpu_kernels(), 'auto': resolve_precision('auto')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**_base_env(), **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}


def test_kernel_path_is_read_from_the_cpu_and_honours_onednn_cap() -> None:
    native = _kernels({})
    # the oracle: torch's own reading of the CPU's instruction set
    has_bf16 = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert native["bf16"] == has_bf16
    assert native["auto"] == ("bf16" if has_bf16 else "fp32")
    if torch.cpu._is_amx_tile_supported():
        assert native["isa"] == "amx-bf16"
    elif has_bf16:
        assert native["isa"] == "avx512-bf16"
    capped = _kernels({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert capped["bf16"] is False and capped["isa"] == "avx2"
    assert capped["auto"] == "fp32" and capped["path"] == "fp32 on AVX2 (oneDNN)"
    if has_bf16:  # capped below AMX, still bf16 through AVX512-BF16
        below_amx = _kernels({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
        assert below_amx["isa"] == "avx512-bf16" and below_amx["auto"] == "bf16"


def test_device_cuda_on_the_command_line_without_a_gpu_exits_2(
    sample_index, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["query", "sample", "--device", "cuda", "onions"])
    assert result.exit_code == 2, result.output
    assert "no CUDA GPU" in result.output and "Traceback" not in result.output
    ok = CliRunner().invoke(cli, ["query", "sample", "--device", "cpu", "--json", "onions"])
    assert ok.exit_code == 0, ok.output


def test_info_and_bench_say_where_models_run(sample_index, tmp_path: Path) -> None:
    info = CliRunner().invoke(cli, ["info", "sample"])
    assert info.exit_code == 0, info.output
    expected = compute.compute_summary("cpu")
    assert f"this host  cpu: {expected['name']}, {expected['path']}" in info.output
    assert f"built on   cpu: {expected['name']}" in info.output  # the manifest's record
    bench = CliRunner().invoke(cli, ["bench", "sample", "-n", "3", "--json"])
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.output)["compute"]["path"] == expected["path"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_embedding_and_reranking_on_cuda_match_the_cpu(cross_encoder_dir: Path) -> None:
    import numpy as np
    from scipy.stats import spearmanr

    from searchpipe.models.biencoder import BiEncoder
    from searchpipe.models.crossencoder import CrossEncoderScorer

    texts = ["a cat sat on the mat", "volcanoes form where plates meet", "bats are mammals"] * 8
    cpu = BiEncoder("minilm", precision="fp32", device="cpu").encode(texts)
    gpu = BiEncoder("minilm", device="auto")
    assert gpu.device == "cuda"
    cosine = (cpu * gpu.encode(texts)).sum(1)
    assert cosine.min() > 0.999
    queries = ["what is a bat?"] * len(texts)
    a = CrossEncoderScorer(str(cross_encoder_dir), precision="fp32", device="cpu")
    b = CrossEncoderScorer(str(cross_encoder_dir), device="cuda")
    assert spearmanr(a.score(queries, texts), b.score(queries, texts)).statistic > 0.99
    assert np.isfinite(b.score(queries, texts)).all()
