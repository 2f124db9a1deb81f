"""WordPiece tokenizers (Hugging Face ``tokenizers``) and the Arrow corpus they are trained on.

A tokenizer folder is what transformers writes (tokenizer.json, tokenizer_config.json,
vocab.txt), so ``AutoTokenizer``, sentence-transformers and our encoder all read the same
files. ``train_tokenizer`` learns a BERT-style (lower-cased, BertNormalizer +
BertPreTokenizer) WordPiece vocabulary from a corpus, reading it batch by batch.

The corpus is an Arrow IPC file written by the ingest stage (columns ``doc_id, title, text,
metadata``), memory-mapped so reading it does not copy it into memory; a BEIR
``corpus.jsonl`` is accepted for convenience (read whole with ``pyarrow.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from searchpipe.columns import TEXT, TITLE
from searchpipe.errors import InputError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class Corpus:
    """Random access to the ``title``/``text`` columns of a corpus file, without loading it.

    >>> corpus = Corpus("corpus.arrow")
    >>> corpus.num_rows, corpus.texts(0, 2)
    (5183, [('Title', 'Text...'), ...])
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"corpus {self.path} does not exist; pass an Arrow file from ingest")
        if self.path.suffix in (".jsonl", ".json"):
            table = self._read_jsonl()
        else:
            table = self._read_arrow()
        if TEXT not in table.column_names:
            raise InputError(
                f"corpus {self.path} has no '{TEXT}' column (columns: "
                f"{', '.join(table.column_names)}); pass the output of `searchpipe ingest`"
            )
        if TITLE in table.column_names and pa.types.is_null(table.schema.field(TITLE).type):
            table = table.drop_columns([TITLE])  # a title column with no titles at all
        for col in (TEXT, TITLE):
            kind = table.schema.field(col).type if col in table.column_names else pa.string()
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise InputError(
                    f"corpus {self.path}: column '{col}' is {kind}, expected string; pass the "
                    "output of `searchpipe ingest`"
                )
        keep = [c for c in (TITLE, TEXT) if c in table.column_names]
        self.table = table.select(keep)

    def _read_arrow(self) -> pa.Table:
        source = pa.memory_map(str(self.path))
        try:
            return pa.ipc.open_file(source).read_all()  # zero-copy views into the mapping
        except pa.ArrowInvalid:
            pass
        try:
            return pa.ipc.open_stream(pa.memory_map(str(self.path))).read_all()
        except pa.ArrowInvalid:
            raise InputError(
                f"corpus {self.path} is neither an Arrow IPC file nor a .jsonl file; pass the "
                "output of `searchpipe ingest` or a BEIR corpus.jsonl"
            ) from None

    def _read_jsonl(self) -> pa.Table:
        import pyarrow.json as pj

        try:
            return pj.read_json(str(self.path))
        except pa.ArrowInvalid as e:
            raise InputError(f"corpus {self.path} is not valid JSON lines: {e}") from None

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def texts(self, start: int, stop: int) -> list[tuple[str, str]]:
        """(title, text) of rows [start, stop); missing values are empty strings."""
        part = self.table.slice(start, max(0, stop - start))
        text = part.column(TEXT).to_pylist()
        title = part.column(TITLE).to_pylist() if TITLE in part.column_names else [""] * len(text)
        return [(a or "", b or "") for a, b in zip(title, text, strict=True)]

    def iter_strings(self, batch_rows: int = 1000) -> Iterator[list[str]]:
        """Titles and texts, a batch of rows at a time (what a tokenizer trainer reads)."""
        for start in range(0, self.num_rows, batch_rows):
            batch = self.texts(start, start + batch_rows)
            yield [s for pair in batch for s in pair if s]


def _check_specials(tok, source: str) -> None:  # type: ignore[no-untyped-def]
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise InputError(
            f"tokenizer {source} lacks the special tokens {', '.join(missing)}; a BERT "
            f"WordPiece vocabulary needs {', '.join(SPECIAL_TOKENS)}"
        )


def load_tokenizer(folder: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    """A ``tokenizers.Tokenizer`` from a model or tokenizer folder (tokenizer.json or vocab.txt).

    >>> tok = load_tokenizer(resolve_model("minilm").path)
    >>> tok.encode("The bat flew.").tokens
    ['[CLS]', 'the', 'bat', 'flew', '.', '[SEP]']
    """
    from tokenizers import Tokenizer

    path = Path(folder)
    if (path / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        lower = True
        if (path / "tokenizer_config.json").is_file():
            cfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
            lower = bool(cfg.get("do_lower_case", True))
        tok = BertWordPieceTokenizer(str(path / "vocab.txt"), lowercase=lower)._tokenizer
    else:
        raise InputError(
            f"{path} has no tokenizer.json or vocab.txt; pass a model or tokenizer folder, or "
            "train one: searchpipe tokenizer train CORPUS --vocab-size N --output DIR"
        )
    _check_specials(tok, str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


def train_tokenizer(
    corpus: str | os.PathLike[str],
    vocab_size: int,
    output: str | os.PathLike[str],
    lowercase: bool = True,
    min_frequency: int = 2,
) -> Path:
    """Train a BERT WordPiece tokenizer on a corpus file and save it as a transformers folder.

    >>> train_tokenizer("corpus.arrow", 8000, "tok/")  # doctest: +SKIP
    PosixPath('tok')
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer

    if vocab_size < len(SPECIAL_TOKENS) + 100:
        raise InputError(f"--vocab-size {vocab_size} is too small; use at least 200 (BERT: 30522)")
    data = Corpus(corpus)
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tok.train_from_iterator(data.iter_strings(), trainer=trainer, length=data.num_rows)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return save_tokenizer(tok, output, lowercase=lowercase)


def save_tokenizer(tok, output: str | os.PathLike[str], lowercase: bool = True) -> Path:  # type: ignore[no-untyped-def]
    """Save a ``tokenizers.Tokenizer`` as a folder ``transformers.AutoTokenizer`` loads."""
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    _check_specials(tok, "being saved")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=lowercase,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    fast.model_max_length = 512
    fast.save_pretrained(str(out))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    # vocab.txt too, for tools that build a WordPiece tokenizer from the vocabulary alone
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab), encoding="utf-8")
    return out
