"""Snippets: the window of a document's text that holds the most query terms, with their offsets.

Terms match as BM25 sees them: lower-cased and Snowball-stemmed (the stemmer of
``searchpipe.index.bm25``), so "crying" in a query marks "cries" in the text; stopwords are
bm25s' longer English list, since marking every "why" and "do" helps no reader. The server returns offsets rather than markup: the web page builds the
``<mark>`` elements itself, so document text is never parsed as HTML.

>>> s = Snippets("why do onions make you cry")
>>> s("Chopping an onion makes your eyes water and you cry.", width=80)
('Chopping an onion makes your eyes water and you cry.', [(12, 17), (18, 23), (48, 51)])
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

WORD = re.compile(r"\w+")


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS)


class Snippets:
    """Snippet maker for one query: ``snippets(text)`` → (snippet, [(start, end), ...])."""

    def __init__(self, query: str) -> None:
        words = [w for w in WORD.findall(query.lower()) if w not in _stopwords()]
        self.stems = set(_stemmer().stemWords(words))

    def __call__(self, text: str, width: int = 240) -> tuple[str, list[tuple[int, int]]]:
        spans = self.matches(text)
        if len(text) <= width:
            return text, spans
        start = self._best_window(spans, width, len(text))
        # widen to word boundaries so no word is cut in half
        floor = max(0, start - 20)
        while start > floor and not text[start - 1].isspace():
            start -= 1
        end = min(len(text), start + width)
        while end < len(text) and not text[end].isspace() and end - start < width + 20:
            end += 1
        prefix = "… " if start > 0 else ""
        suffix = " …" if end < len(text) else ""
        shift = len(prefix) - start
        inside = [(a + shift, b + shift) for a, b in spans if a >= start and b <= end]
        return prefix + text[start:end] + suffix, inside

    def matches(self, text: str) -> list[tuple[int, int]]:
        """[start, end) of every word of ``text`` whose stem is a query term's."""
        if not self.stems:
            return []
        found = list(WORD.finditer(text))
        stems = _stemmer().stemWords([m.group().lower() for m in found])
        return [m.span() for m, s in zip(found, stems, strict=True) if s in self.stems]

    @staticmethod
    def _best_window(spans: list[tuple[int, int]], width: int, length: int) -> int:
        """Start of the ``width``-character window covering the most matches (0 if none)."""
        best, best_count = 0, 0
        j = 0
        for i, (a, _) in enumerate(spans):
            while j < len(spans) and spans[j][1] <= a + width:
                j += 1
            if j - i > best_count:
                best, best_count = a, j - i
        # start a little before the first match, for context
        return max(0, min(best - 40, length - width)) if best_count else 0
