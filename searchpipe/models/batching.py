"""Token-budget batching shared by the bi-encoder and the cross-encoder.

Texts are tokenized once, sorted by length, and cut into batches whose padded size
(rows x longest row) stays under a token budget: short texts travel in large batches, long
ones in small batches, and almost no compute is spent on padding. Padding is built with
NumPy from one flat id array, so the hot loop does no per-row Python work.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


def plan_batches(lengths: np.ndarray, token_budget: int, max_rows: int) -> list[np.ndarray]:
    """Row indices of each batch, longest texts first, each under ``token_budget`` padded tokens.

    >>> [b.tolist() for b in plan_batches(np.array([3, 10, 5, 2]), token_budget=12, max_rows=8)]
    [[1], [2, 0], [3]]
    """
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    i = 0
    while i < len(order):
        longest = max(int(lengths[order[i]]), 1)
        rows = max(1, min(max_rows, token_budget // longest))
        batches.append(order[i : i + rows])
        i += rows
    return batches


@dataclass
class Packed:
    """Token ids of many texts in one flat array, with per-text offsets."""

    ids: np.ndarray  # (N_tokens,) int64
    types: np.ndarray  # (N_tokens,) int64, segment ids
    starts: np.ndarray  # (n,)
    lengths: np.ndarray  # (n,)

    @classmethod
    def from_encoding(
        cls, input_ids: list[list[int]], token_type_ids: list[list[int]] | None
    ) -> Packed:
        lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        total = int(lengths.sum())
        ids = np.fromiter((t for row in input_ids for t in row), dtype=np.int64, count=total)
        if token_type_ids is None:
            types = np.zeros(total, dtype=np.int64)
        else:
            types = np.fromiter(
                (t for row in token_type_ids for t in row), dtype=np.int64, count=total
            )
        return cls(ids, types, starts, lengths)

    def pad(self, rows: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, token_type_ids, attention_mask)`` of ``rows``, each (B, T)."""
        lens = self.lengths[rows]
        width = int(lens.max())
        cols = np.arange(width)
        mask = cols[None, :] < lens[:, None]  # (B, T)
        pos = np.where(mask, self.starts[rows][:, None] + cols[None, :], 0)
        ids = np.where(mask, self.ids[pos], pad_id)
        types = np.where(mask, self.types[pos], 0)
        return ids, types, mask.astype(np.int64)


def iter_batches(
    packed: Packed, token_budget: int, max_rows: int, pad_id: int
) -> Iterator[tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    for rows in plan_batches(packed.lengths, token_budget, max_rows):
        yield rows, packed.pad(rows, pad_id)
