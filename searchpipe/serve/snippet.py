"""Snippets for the page: the window of a hit's text that holds the most highlighted terms.

The terms are found by ``searchpipe.stages.snippet`` (the stage ``Searcher.search`` runs: BM25's
stemming and stopwords, spans into the matched passage); this module only cuts a long passage
to a readable window and moves the spans with it. The server returns offsets rather than
markup: the web page builds the ``<mark>`` elements itself, so document text is never parsed
as HTML.

>>> window("Chopping an onion makes your eyes water.", [(12, 17)], width=80)
('Chopping an onion makes your eyes water.', [(12, 17)])
>>> window("x " * 200 + "an onion here " + "y " * 200, [(412, 417)], width=40)[0]
'… x x x x x x x x x x x x x x an onion here …'
"""

from __future__ import annotations

ELLIPSIS = "… "


def window(
    text: str, spans: list[tuple[int, int]], width: int = 240
) -> tuple[str, list[tuple[int, int]]]:
    """``text`` cut to about ``width`` characters around the most ``spans``, and the spans
    inside that window (shifted to it). Short texts come back whole."""
    if len(text) <= width:
        return text, spans
    start = _best_start(spans, width, len(text))
    floor = max(0, start - 20)  # widen to word boundaries so no word is cut in half
    while start > floor and not text[start - 1].isspace():
        start -= 1
    end = min(len(text), start + width)
    while end < len(text) and not text[end].isspace() and end - start < width + 20:
        end += 1
    prefix = ELLIPSIS if start > 0 else ""
    suffix = " …" if end < len(text) else ""
    shift = len(prefix) - start
    inside = [(a + shift, b + shift) for a, b in spans if a >= start and b <= end]
    return prefix + text[start:end] + suffix, inside


def _best_start(spans: list[tuple[int, int]], width: int, length: int) -> int:
    """Start of the ``width``-character window covering the most spans (0 if none)."""
    best, best_count = 0, 0
    j = 0
    for i, (a, _) in enumerate(spans):
        while j < len(spans) and spans[j][1] <= a + width:
            j += 1
        if j - i > best_count:
            best, best_count = a, j - i
    # start a little before the first match, for context
    return max(0, min(best - 40, length - width)) if best_count else 0
