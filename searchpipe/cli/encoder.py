"""CLI commands of the built-in encoder: export, tokens, tokenizer train, pretrain.

Thin wrappers over the Python API (``searchpipe.models.bert_io``, ``.contextual``,
``.tokenizer``, ``searchpipe.training.pretrain``); torch and transformers are imported inside the
commands so ``searchpipe --help`` stays fast. Errors are ``SearchpipeError``s, which the root
group prints as ``Error: <message>`` with their exit code.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("export")
@click.argument("model")
@click.option(
    "--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the Hugging Face BERT model to.",
)  # fmt: skip
def export_cmd(model: str, output: Path) -> None:
    """Load MODEL (a BERT folder, 'minilm' or our checkpoint) and write it as a HF BERT folder.

    The folder loads with transformers.AutoModel, sentence_transformers.SentenceTransformer
    and, for a model with a classification head, sentence_transformers.CrossEncoder.
    """
    from searchpipe.models.bert_io import export

    out = export(model, output)
    click.echo(str(out))


@click.command("tokens")
@click.argument("model")
@click.argument("sentence")
@click.option("--word", "-w", required=True, help="The word whose vectors to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the full vectors as JSON.")
def tokens_cmd(model: str, sentence: str, word: str, as_json: bool) -> None:
    """Show WORD's contextual vector in SENTENCE (mean over its wordpieces) and its static one.

    Example: searchpipe tokens minilm "The bat flew out of the cave." --word bat
    """
    import torch.nn.functional as F

    from searchpipe.models.contextual import load_for_tokens, word_vectors

    encoder, tokenizer = load_for_tokens(model)
    found = word_vectors(encoder, tokenizer, sentence, word)
    if as_json:
        click.echo(json.dumps([v.to_dict() for v in found]))
        return
    for v in found:
        c, s = v.contextual, v.static
        click.echo(f"word {v.word!r}: wordpieces {v.pieces} at positions {v.positions}")
        click.echo(
            f"  contextual: dim {c.numel()}, norm {c.norm():.4f}, "
            f"first 8 [{', '.join(f'{x:+.4f}' for x in c[:8].tolist())}]"
        )
        click.echo(
            f"  static:     dim {s.numel()}, norm {s.norm():.4f}, "
            f"first 8 [{', '.join(f'{x:+.4f}' for x in s[:8].tolist())}]"
        )
        click.echo(f"  cosine(contextual, static) {F.cosine_similarity(c, s, dim=0):.4f}")


@click.group("tokenizer")
def tokenizer_group() -> None:
    """WordPiece tokenizers for the built-in encoder."""


@tokenizer_group.command("train")
@click.argument("corpus", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--vocab-size", default=30522, show_default=True, type=click.IntRange(min=200))
@click.option(
    "--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Folder to save the tokenizer to (transformers layout).",
)  # fmt: skip
@click.option("--cased", is_flag=True, help="Keep case (default: lower-case, like BERT uncased).")
def tokenizer_train_cmd(corpus: Path, vocab_size: int, output: Path, cased: bool) -> None:
    """Train a BERT WordPiece tokenizer on CORPUS (Arrow file from ingest, or a .jsonl)."""
    from searchpipe.models.tokenizer import load_tokenizer, train_tokenizer

    out = train_tokenizer(corpus, vocab_size, output, lowercase=not cased)
    size = load_tokenizer(out).get_vocab_size()
    click.echo(f"{out} ({size} tokens)")


@click.command("pretrain")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--no-resume", is_flag=True,
    help="Start over, deleting OUTPUT's checkpoints, instead of resuming from the latest.",
)  # fmt: skip
def pretrain_cmd(config: Path, no_resume: bool) -> None:
    """Pretrain (MLM + NSP) or continue pretraining as CONFIG.yaml says; resumes by default."""
    from searchpipe.config import load_config
    from searchpipe.training.pretrain import PretrainConfig, pretrain

    cfg = load_config(config, PretrainConfig)
    final = pretrain(cfg, resume=not no_resume)
    click.echo(str(final))


COMMANDS = (export_cmd, tokens_cmd, tokenizer_group, pretrain_cmd)
