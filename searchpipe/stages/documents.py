"""Folders of documents: plain files read into corpus records, each file's reason kept when not.

``searchpipe index FOLDER`` (a folder without ``corpus.jsonl``) reads every file under it,
recursively, that ``--glob`` patterns admit:

- ``.txt``: the text, decoded as UTF-8 or, failing that, as charset-normalizer detects it;
- ``.md``/``.markdown``: front matter (``python-frontmatter``) becomes metadata and may give
  the title; the body is the text;
- ``.html``/``.htm``: the visible text (BeautifulSoup, scripts, styles and navigation
  dropped), the title from ``<title>``;
- ``.pdf``: the text of each page (``pypdf``), pages joined by blank lines, page count kept;
- ``.docx``: the paragraphs (``python-docx``), the title from the document properties.

A document's id is its path relative to the folder. Its metadata holds ``path``,
``extension``, ``size``, ``modified`` (UTC, ISO 8601), ``pages`` where a format has them, and
front-matter fields. A file that cannot be read (binary, encrypted, undecodable, empty) is
skipped with its reason; one bad file never stops the others.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchpipe.files import sha256_file


class Unreadable(Exception):
    """A file that is skipped, with the reason as its message."""


@dataclass
class Document:
    doc_id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _decode(raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise Unreadable("binary content (NUL bytes), not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    if best is None:
        raise Unreadable("not valid UTF-8 and no other encoding fits it")
    return str(best)


def _text(path: Path) -> tuple[str, str, dict[str, Any]]:
    return "", _decode(path.read_bytes()), {}


def _markdown(path: Path) -> tuple[str, str, dict[str, Any]]:
    import frontmatter

    try:
        post = frontmatter.loads(_decode(path.read_bytes()))
    except Exception as e:  # the front matter is YAML: any of its parse errors
        raise Unreadable(
            f"front matter is not valid YAML ({str(e).splitlines()[0][:120]})"
        ) from None
    meta = {k: v for k, v in post.metadata.items() if k != "title"}
    return str(post.metadata.get("title") or ""), post.content, meta


def _html(path: Path) -> tuple[str, str, dict[str, Any]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode(path.read_bytes()), "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "template", "nav", "header", "footer", "head"]):
        tag.decompose()
    body = soup.find("main") or soup.find("article") or soup.body or soup
    return title, body.get_text("\n", strip=True), {}


def _pdf(path: Path) -> tuple[str, str, dict[str, Any]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("encrypted PDF (it needs a password)")
        pages = [page.extract_text() or "" for page in reader.pages]
        info = reader.metadata
        title = str(info.get("/Title") or "") if info is not None else ""
    except Unreadable:
        raise
    except (PdfReadError, ValueError, KeyError, OSError) as e:
        raise Unreadable(f"not a readable PDF ({type(e).__name__}: {str(e)[:120]})") from None
    return title, "\n\n".join(p.strip() for p in pages), {"pages": len(pages)}


def _docx(path: Path) -> tuple[str, str, dict[str, Any]]:
    import docx

    try:
        document = docx.Document(str(path))
    except Exception as e:  # python-docx raises zip, XML and its own errors alike
        raise Unreadable(f"not a readable .docx ({type(e).__name__})") from None
    text = "\n".join(p.text for p in document.paragraphs if p.text.strip())
    return document.core_properties.title or "", text, {}


READERS = {
    ".txt": _text, ".md": _markdown, ".markdown": _markdown, ".html": _html, ".htm": _html,
    ".pdf": _pdf, ".docx": _docx,
}  # fmt: skip


def _admitted(rel: str, globs: tuple[str, ...]) -> bool:
    """``--glob`` patterns: ``*.md`` includes, ``!drafts/*`` excludes; no includes: all formats."""
    includes = [g for g in globs if not g.startswith("!")]
    excludes = [g[1:] for g in globs if g.startswith("!")]
    if any(fnmatch.fnmatch(rel, g) for g in excludes):
        return False
    return any(fnmatch.fnmatch(rel, g) for g in includes) if includes else True


def files(folder: Path, globs: tuple[str, ...] = ()) -> list[Path]:
    """The files under ``folder`` that ``globs`` admit, in path order (hidden ones left out)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in Path(rel).parts):
            if _admitted(rel, globs):
                out.append(p)
    return out


def read_document(path: Path, folder: Path) -> Document:
    """One file as a corpus record; raises ``Unreadable`` with the reason it is skipped."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise Unreadable(
            f"unknown format {path.suffix or '(no extension)'!r}; searchpipe reads {', '.join(READERS)}"
        )
    title, text, meta = reader(path)
    text = text.strip()
    if not text:
        raise Unreadable("no text in it (empty, or only markup or images)")
    stat = path.stat()
    rel = path.relative_to(folder).as_posix()
    metadata = {
        "path": rel,
        "extension": path.suffix.lower(),
        "size": stat.st_size,
        "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stat.st_mtime)),
        **meta,
    }
    return Document(rel, title.strip(), text, json.loads(json.dumps(metadata, default=str)))


def read_folder(
    folder: Path, globs: tuple[str, ...] = ()
) -> Iterator[tuple[Path, Document | None, str | None]]:
    """(path, document, None) for each readable file, (path, None, reason) for the others."""
    for path in files(folder, globs):
        try:
            yield path, read_document(path, folder), None
        except Unreadable as e:
            yield path, None, str(e)
        except OSError as e:
            yield path, None, f"cannot be read ({e.strerror or e})"


def folder_sha256(folder: Path, globs: tuple[str, ...] = ()) -> str:
    """A fingerprint of the admitted files: their relative paths and contents."""
    digest = hashlib.sha256()
    for path in files(folder, globs):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()
