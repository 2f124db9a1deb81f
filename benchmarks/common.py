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


def need(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"{path} not found: the benchmarks need ../shared/data beside the repository")
    return path


def rotate(
    systems: dict[str, Callable[[Any], Any]], chunks: list[Any]
) -> dict[str, tuple[float, list[Any]]]:
    """Run every system on each chunk, rotating which goes first, so that drift in the
    machine's speed (turbo, a neighbour) falls on all alike; total seconds and outputs of each.
    """
    names = list(systems)
    seconds = dict.fromkeys(names, 0.0)
    outputs: dict[str, list[Any]] = {n: [] for n in names}
    for i, chunk in enumerate(chunks):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            result = systems[name](chunk)
            seconds[name] += time.perf_counter() - t0
            outputs[name].append(result)
    return {n: (seconds[n], outputs[n]) for n in names}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:<24} {value}")
