"""``searchpipe serve``: the HTTP API and search page over one or more indexes (FastAPI on
uvicorn). A thin command over ``searchpipe.serve``; see that package for how it works."""

from __future__ import annotations

import os
from pathlib import Path

import click

from searchpipe.cli.common import index_dir_option
from searchpipe.errors import InputError, RunError, SearchpipeError


def read_api_key(path: Path) -> str:
    """The key in ``path`` (its first line, stripped); an empty or unreadable file is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--api-key-file {path} cannot be read ({e})") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(key) < 16:
        raise InputError(
            f"--api-key-file {path} holds {'no key' if not key else 'a key shorter than 16 characters'}; "
            'write a long random one, e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return key


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--rerank", default=None, help="CrossEncoder model folder to rerank with.")
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the API key. Without it the server takes no writes and reads are open; "
    "with it every request but /healthz and /readyz needs 'Authorization: Bearer KEY'.",
)
@click.option(
    "--workers-threads",
    "threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch threads of the inference worker [default: the CPUs this process may use].",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "auto"]),
    default="fp32",
    show_default=True,
    help="Of the query encoder and reranker. In bf16 an answer can depend on which queries "
    "share its micro-batch; fp32 answers the same either way. 'auto': bf16 where the CPU has it.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most queries answered in one pass (1 turns micro-batching off).",
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(min=0, max=1000),
    default=2.0,
    show_default=True,
    help="How long the worker waits for more queries to batch with the first.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Queued requests before the server answers 503 (Retry-After).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds a search may take, queue included, before it is answered 504.",
)
@click.option(
    "--cors", multiple=True, help="Origin allowed to call the API from a browser (repeatable)."
)
@index_dir_option
def serve(
    names: tuple[str, ...],
    host: str,
    port: int,
    rerank: str | None,
    api_key_file: Path | None,
    threads: int | None,
    precision: str,
    max_batch: int,
    batch_wait_ms: float,
    queue_size: int,
    timeout_s: float,
    cors: tuple[str, ...],
    index_dir: Path | None,
) -> None:
    """Serve indexes NAMES over HTTP: a JSON API (docs at /docs) and a search page at /.

    New versions committed by 'searchpipe add/delete/index' are picked up and swapped in
    while serving.
    """
    import uvicorn

    from searchpipe.serve.app import ServeConfig, create_app

    config = ServeConfig(
        names=list(names),
        index_root=index_dir,
        rerank=rerank,
        precision=precision,  # type: ignore[arg-type]  # click checked the choice
        api_key=read_api_key(api_key_file) if api_key_file is not None else None,
        threads=threads or len(os.sched_getaffinity(0)),
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        queue_size=queue_size,
        request_timeout_s=timeout_s,
        cors=list(cors),
    )
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    )
    state = app.state.server
    state.on_failure = lambda: setattr(server, "should_exit", True)  # a bad index or model
    click.echo(f"serving {', '.join(config.names)} on http://{host}:{port}/ (loading)", err=True)
    server.run()
    if state.startup_failure is not None:
        error = state.startup_failure
        if isinstance(error, SearchpipeError):
            raise error
        raise RunError(f"serve: loading the indexes failed ({type(error).__name__}: {error})")


COMMANDS = (serve,)
