"""Folders of documents: each format read by its library, bad files skipped and listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from searchpipe.cli import main
from searchpipe.index.store import Index
from searchpipe.stages.documents import read_document
from searchpipe.stages.ingest import Ingest


def text_pdf(path: Path, pages: list[str], title: str = "") -> None:
    """A minimal PDF with one line of Helvetica text per page (offsets computed exactly)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>")
    font = 3 + 2 * len(pages)
    for i, line in enumerate(pages):
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>"
        )
        stream = f"BT /F1 12 Tf 72 720 Td ({line}) Tj ET"
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objs.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objs.append(f"<< /Title ({title}) >>")
    out = b"%PDF-1.4\n"
    offsets = []
    for n, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += (
        f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R /Info {len(objs)} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    path.write_bytes(out)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    import docx
    from pypdf import PdfWriter

    root = tmp_path / "docs"
    (root / "notes").mkdir(parents=True)
    (root / "plain.txt").write_text("Honeybees dance to tell each other where flowers are.\n")
    (root / "notes" / "onions.md").write_text(
        "---\ntitle: Why onions sting\nyear: 2021\ntags: [kitchen, chemistry]\n---\n"
        "Cutting an onion releases syn-propanethial-S-oxide, which makes eyes water.\n"
    )
    (root / "contrails.html").write_text(
        "<html><head><title>Contrails</title><script>var x = 'not text';</script></head>"
        "<body><nav>Home | About</nav><main><p>Planes leave white lines: water vapour in the "
        "exhaust freezes into ice crystals.</p></main></body></html>"
    )
    text_pdf(root / "mars.pdf", ["Mars looks red because of iron oxide dust.", "Page two."], "Mars")
    word = docx.Document()
    word.core_properties.title = "Tides"
    word.add_paragraph("The Moon's gravity pulls the oceans into tidal bulges.")
    word.save(str(root / "tides.docx"))
    # the broken ones
    (root / "junk.txt").write_bytes(b"\x00\x01\x02binary" * 50)
    (root / "latin.txt").write_bytes(bytes(range(128, 256)) * 20)
    (root / "empty.md").write_text("")
    secret = PdfWriter()
    secret.add_blank_page(100, 100)
    secret.encrypt("password", algorithm="RC4-128")
    secret.write(str(root / "secret.pdf"))
    (root / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / ".hidden.txt").write_text("never read")
    return root


GOOD = {"contrails.html", "mars.pdf", "notes/onions.md", "plain.txt", "tides.docx"}
BAD = {
    "junk.txt": "binary",
    "latin.txt": "no other encoding",
    "empty.md": "no text",
    "secret.pdf": "encrypted",
    "picture.png": "unknown format",
}


def test_each_format_gives_its_text_title_and_metadata(folder: Path) -> None:
    md = read_document(folder / "notes" / "onions.md", folder)
    assert (md.doc_id, md.title) == ("notes/onions.md", "Why onions sting")
    assert md.text.startswith("Cutting an onion") and "---" not in md.text
    assert md.metadata["year"] == 2021 and md.metadata["tags"] == ["kitchen", "chemistry"]
    html = read_document(folder / "contrails.html", folder)
    assert html.title == "Contrails" and "ice crystals" in html.text
    assert "not text" not in html.text and "About" not in html.text
    pdf = read_document(folder / "mars.pdf", folder)
    assert pdf.title == "Mars" and pdf.metadata["pages"] == 2
    assert "iron oxide" in pdf.text and "Page two." in pdf.text
    word = read_document(folder / "tides.docx", folder)
    assert word.title == "Tides" and "tidal bulges" in word.text
    meta = read_document(folder / "plain.txt", folder).metadata
    assert meta["path"] == "plain.txt" and meta["extension"] == ".txt"
    assert meta["size"] == (folder / "plain.txt").stat().st_size and meta["modified"].endswith("Z")


def test_a_folder_indexes_every_good_file_and_lists_every_bad_one(folder: Path, home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["index", str(folder), "--name", "docs", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["docs"] == len(GOOD)
    assert {s["file"]: s["reason"] for s in summary["skipped"]}.keys() == BAD.keys()
    for s in summary["skipped"]:
        assert BAD[s["file"]] in s["reason"], s
        assert f"{s['file']}: " in result.stderr
    index = Index.open("docs")
    assert set(index.docs.column("doc_id").to_pylist()) == GOOD
    hits = json.loads(
        runner.invoke(main, ["query", "docs", "why is mars red", "-k", "1", "--json"]).stdout
    )
    assert hits["results"][0]["hits"][0]["doc_id"] == "mars.pdf"

    strict = runner.invoke(main, ["index", str(folder), "--name", "strict", "--strict"])
    assert strict.exit_code == 2 and "5 file(s)" in strict.output and "secret.pdf" in strict.output
    assert not (home / "indexes" / "strict" / "manifest.json").exists()


def test_globs_include_and_exclude(folder: Path) -> None:
    only_md = Ingest(folder, globs=("*.md", "**/*.md"))
    assert [r for b in only_md.read() for r in b.column("doc_id").to_pylist()] == [
        "notes/onions.md"
    ]
    no_notes = Ingest(folder, globs=("!notes/*",))
    ids = [r for b in no_notes.read() for r in b.column("doc_id").to_pylist()]
    assert "notes/onions.md" not in ids and "plain.txt" in ids
    assert only_md.fingerprint_source() != no_notes.fingerprint_source()


def test_index_reports_truncation_against_the_tokenizer(home: Path, sample_corpus: Path) -> None:
    """Oracle: the model's own tokenizer, counting [CLS] and [SEP], on title + text."""
    from transformers import AutoTokenizer

    from searchpipe.models.resolve import resolve_model

    lines = sample_corpus.read_text().splitlines()[:40]
    small = home / "small.jsonl"
    small.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(
        main, ["index", str(small), "--name", "cut", "--max-length", "40", "--no-chunk", "--json"]
    )
    assert result.exit_code == 0, result.output
    cut = json.loads(result.stdout)["truncation"]
    tok = AutoTokenizer.from_pretrained(str(resolve_model("minilm").path))
    lengths = []
    for line in lines:
        d = json.loads(line)
        lengths.append(len(tok(f"{d['title']} {d['text']}".strip())["input_ids"]))
    over = [n - 40 for n in lengths if n > 40]
    assert cut == {"max_length": 40, "docs": len(over), "of": 40, "tokens_cut": sum(over)}
    assert f"{len(over)} of 40 documents are longer" in result.stderr
    assert "index without --no-chunk to split them" in result.stderr
