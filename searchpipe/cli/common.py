"""What every command shares: output, common options, and options made from the config schema.

``options_from(Model)`` gives a command one ``--flag`` per field of a pydantic settings model
(``rerank_depth`` → ``--rerank-depth``), with the field's type, choices and description, so the
CLI, YAML and the Python API use the same names and the same validation. Flags default to
None, so a command knows which settings were given and can let them override a config file.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel

from searchpipe.config import load_config, validate


def emit(obj: Any) -> None:
    """Print one JSON object on stdout (``--json`` output)."""
    click.echo(json.dumps(obj, indent=2, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
index_dir_option = click.option(
    "--index-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding indexes (default: $SEARCHPIPE_HOME/indexes or ./indexes).",
)


def describe_compute(c: dict[str, Any] | None) -> str:
    """One line for where a model ran (``models.precision.compute_summary``)."""
    if not c:
        return "not recorded (built before searchpipe recorded it)"
    threads = f", {c['threads']} threads" if c.get("threads") else ""
    # "attention": what indexes recorded while only attention was ours
    ours = c.get("kernels") or c.get("attention")
    kernels = f", attention and LayerNorm: {ours}" if ours else ""
    return f"{c['device']}: {c['name']}, {c['path']}{threads}{kernels}"


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is_flag) for a field annotation; Optional[X] is X, list[X] is X repeated."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if annotation is bool:
        return None, True
    if annotation is Path:
        return click.Path(path_type=Path), False
    if annotation in (int, float, str):
        return annotation, False
    raise TypeError(f"no command-line form for settings of type {annotation!r}")


def options_from(
    model: type[BaseModel], exclude: tuple[str, ...] = (), flags: dict[str, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding one option per field of ``model`` (except ``exclude``); ``flags``
    renames a field's flag where the bare name would be unclear on a command line shared with
    other settings (``EngineConfig.address`` is ``--ray-address``); the parameter keeps the
    field's name."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for name, field in reversed(list(model.model_fields.items())):
            if name in exclude:
                continue
            ctype, is_flag = _click_type(field.annotation)
            spelled = (flags or {}).get(name, name)
            flag = f"-{spelled}" if len(spelled) == 1 else f"--{spelled.replace('_', '-')}"
            shown = f" [default: {field.default}]" if field.default is not None else ""
            help_text = (field.description or name.replace("_", " ").capitalize()) + shown
            if is_flag:
                f = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)(f)
            elif typing.get_origin(field.annotation) is list:
                help_text = field.description or name
                f = click.option(flag, name, type=ctype, multiple=True, help=help_text)(f)
            else:
                f = click.option(flag, name, type=ctype, default=None, help=help_text)(f)
        return f

    return decorate


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line (flags left out are None, repeated ones ())."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in flags.items() if v not in (None, ())
    }


def settings_of(
    model: type[Any], overrides: dict[str, Any], config_file: Path | None, section: str | None
) -> Any:
    """``model`` from a config file's ``section`` with the command line's ``overrides`` on top,
    or from the command line alone."""
    if config_file is not None:
        return load_config(config_file, model, section=section, overrides=overrides)
    return validate(overrides, model, source="command-line options")


config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML file with a search: section (as searchpipe tune writes); flags override it.",
)
