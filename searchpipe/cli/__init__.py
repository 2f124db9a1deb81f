"""The ``searchpipe`` command line: a thin shell over ``searchpipe.api``.

Results go to stdout (``--json`` for one JSON object), logs and progress bars to stderr.
User mistakes exit with code 2 and a one-line message, runtime failures with code 1; no
traceback is shown for either (set ``SEARCHPIPE_DEBUG=1`` to see one). One module per
command group: ``index`` (index, info, check, add, delete), ``search`` (query, search, bench),
``jobs`` (run), ``pipes`` (stages, stage, pipe: the stage registry), ``eval``, ``train`` (train, tune), ``encoder`` (export, tokens, tokenizer,
pretrain), ``serve``; the options they share are in ``common``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from searchpipe.errors import SearchpipeError


class _Group(click.Group):
    """Turns our errors into click errors with the right exit code and no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SearchpipeError as e:
            if os.environ.get("SEARCHPIPE_DEBUG"):
                raise
            err = click.ClickException(str(e))
            err.exit_code = e.exit_code  # type: ignore[misc]  # click keeps it per instance
            raise err from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.version_option(package_name="searchpipe")
def main(verbose: int) -> None:
    """searchpipe: semantic search and reranking over Arrow pipelines."""
    # our own progress notes at INFO; other libraries' only when asked (-vv)
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("searchpipe").setLevel(logging.DEBUG if verbose else logging.INFO)
    for chatty in ("faiss", "bm25s", "numba", "sentence_transformers", "transformers", "filelock"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def _register() -> None:
    # every command module imports its heavy parts inside the commands, so --help stays fast
    from searchpipe.cli import encoder, eval, index, jobs, pipes, search, serve, train

    for module in (index, search, jobs, pipes, eval, train, encoder, serve):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
