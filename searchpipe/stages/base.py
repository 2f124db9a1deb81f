"""The stage contract: Arrow record batches in, the same rows (or new rows) with columns added out.

A stage names the columns it reads (``requires``) and the ones it adds (``provides``). It is
a callable over an iterator of ``pyarrow.RecordBatch`` and yields new batches; it never
mutates what it was given. Heavy resources (models, indexes) are loaded in ``open``, which a
pipeline calls only after it has checked every stage's columns, so a misspelled column fails
in milliseconds instead of after a model load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import pyarrow as pa


class Stage:
    """Base class of every pipeline stage.

    Subclasses set ``requires``/``provides`` and implement ``process``. ``settings`` returns
    what changes the stage's output; the batch runner uses it to skip unchanged stages.
    """

    name: ClassVar[str] = "stage"
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    #: True when each output batch depends only on one input batch (a map over batches),
    #: so a batch job can resume the stage after its last complete shard.
    batchwise: ClassVar[bool] = True
    #: False for sinks (index build, write): a batch job does not store their output again.
    materialize: ClassVar[bool] = True

    def output_columns(self, available: set[str]) -> set[str]:
        """Columns present after this stage, given the ones present before it."""
        return available | set(self.provides)

    def settings(self) -> dict[str, Any]:
        """Everything that changes this stage's output (for cache fingerprints)."""
        return {}

    def open(self) -> None:
        """Load models or indexes. Called once, after the pipeline has been checked."""

    def process(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return self.process(batches)

    def fingerprint(self, upstream: str) -> str:
        payload = json.dumps(
            {"stage": self.name, "settings": self.settings(), "upstream": upstream},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


class Source(Stage):
    """A stage that starts a stream (reads a file); it takes no input batches."""

    batchwise = False

    def fingerprint_source(self) -> str:
        """A fingerprint of the source data itself (e.g. the file's sha256)."""
        raise NotImplementedError

    def process(self, batches: Iterable[pa.RecordBatch] = ()) -> Iterator[pa.RecordBatch]:
        return self.read()

    def read(self) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError
