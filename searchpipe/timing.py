"""Where query time goes: named wall-clock counters that the hot paths add to.

The encoders add their forward passes, the indexes their searches; ``searchpipe bench``
reads the counters around each query to print a breakdown. Counting costs two
``perf_counter`` calls per block, nothing when nobody reads them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

#: seconds spent per component since the last ``reset``
seconds: defaultdict[str, float] = defaultdict(float)


@contextmanager
def timed(name: str) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[name]``.

    >>> with timed("faiss"): pass
    >>> "faiss" in seconds
    True
    """
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] += time.perf_counter() - t0


def reset() -> None:
    seconds.clear()
