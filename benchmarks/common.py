"""Shared helpers for the benchmark scripts: data paths, timing rounds, printing."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CACHE = ROOT / "benchmarks" / ".cache"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def need(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"{path} not found: the benchmarks need ../shared/data beside the repository")
    return path


def alternate(
    baseline: Callable[[Any], Any], ours: Callable[[Any], Any], chunks: list[Any]
) -> tuple[float, float, list[Any], list[Any]]:
    """Run both on each chunk, alternating which goes first; total seconds and outputs of each."""
    t_base = t_ours = 0.0
    out_base, out_ours = [], []
    for i, chunk in enumerate(chunks):
        order = [("b", baseline), ("o", ours)] if i % 2 == 0 else [("o", ours), ("b", baseline)]
        for tag, fn in order:
            t0 = time.perf_counter()
            result = fn(chunk)
            dt = time.perf_counter() - t0
            if tag == "b":
                t_base += dt
                out_base.append(result)
            else:
                t_ours += dt
                out_ours.append(result)
    return t_base, t_ours, out_base, out_ours


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:<24} {value}")
