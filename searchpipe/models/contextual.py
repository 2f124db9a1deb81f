"""Contextual token embeddings: what the encoder makes of one word in one sentence.

A word's contextual vector is the mean of the last hidden states of its wordpieces; its
static vector is the mean of their input (token) embeddings, before position, segment and
any attention. The static vector of "bat" is the same in every sentence; the contextual one
moves with the meaning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from searchpipe.errors import InputError
from searchpipe.models.encoder import TransformerEncoder


@dataclass
class WordVectors:
    """One occurrence of ``word`` in ``sentence``."""

    word: str
    sentence: str
    pieces: list[str]  # its wordpieces, e.g. ['bat'] or ['photo', '##synthesis']
    positions: list[int]  # their token positions in the encoded sentence ([CLS] is 0)
    contextual: torch.Tensor  # (D,) mean last hidden state over the pieces
    static: torch.Tensor  # (D,) mean input token embedding over the pieces

    def to_dict(self) -> dict[str, Any]:
        return {
            "word": self.word,
            "sentence": self.sentence,
            "pieces": self.pieces,
            "positions": self.positions,
            "contextual": self.contextual.tolist(),
            "static": self.static.tolist(),
        }


def word_vectors(
    encoder: TransformerEncoder, tokenizer: Any, sentence: str, word: str
) -> list[WordVectors]:
    """Vectors of every occurrence of ``word`` (matched as a whole word, case as the tokenizer).

    >>> enc, tok = load_encoder("minilm"), load_tokenizer(resolve_model("minilm").path)
    >>> [v.pieces for v in word_vectors(enc, tok, "The bat flew out.", "bat")]
    [['bat']]
    """
    target = [t for t in tokenizer.encode(word, add_special_tokens=False).tokens]
    if not target:
        raise InputError(f"word {word!r} has no tokens; pass a word that appears in the sentence")
    enc = tokenizer.encode(sentence)
    max_len = encoder.config.max_len
    if len(enc.ids) > max_len:
        raise InputError(
            f"the sentence has {len(enc.ids)} tokens, more than the model's max_len {max_len}; "
            "pass a shorter sentence"
        )
    starts = [
        i
        for i in range(len(enc.tokens) - len(target) + 1)
        if enc.tokens[i : i + len(target)] == target
        and enc.word_ids[i] is not None
        # whole words only: the match starts a word and ends where that word ends
        and (i == 0 or enc.word_ids[i - 1] != enc.word_ids[i])
        and (
            i + len(target) == len(enc.tokens)
            or enc.word_ids[i + len(target)] != enc.word_ids[i + len(target) - 1]
        )
    ]
    if not starts:
        words = sorted(
            {
                sentence[a:b]
                for (a, b), w in zip(enc.offsets, enc.word_ids, strict=True)
                if w is not None
            }
        )
        raise InputError(
            f"word {word!r} (wordpieces {target}) does not occur in {sentence!r}; its words are: "
            f"{', '.join(words)}"
        )
    ids = torch.tensor([enc.ids])
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        hidden = encoder(ids, torch.ones_like(ids), torch.tensor([enc.type_ids]))[0]  # (T, D)
        table = encoder.embeddings.word_embeddings.weight
    encoder.train(was_training)
    out = []
    for s in starts:
        pos = list(range(s, s + len(target)))
        out.append(
            WordVectors(
                word=word,
                sentence=sentence,
                pieces=target,
                positions=pos,
                contextual=hidden[pos].mean(0).float(),
                static=table[ids[0, pos]].mean(0).detach().float().clone(),
            )
        )
    return out


def load_for_tokens(model: str | os.PathLike[str]) -> tuple[TransformerEncoder, Any]:
    """Our encoder and the tokenizer of a model folder (or 'minilm')."""
    from searchpipe.models.bert_io import load_encoder
    from searchpipe.models.resolve import resolve_model
    from searchpipe.models.tokenizer import load_tokenizer

    ref = resolve_model(model)
    return load_encoder(ref.path), load_tokenizer(ref.path)
