"""The Python API: the same names and settings as the YAML configs and the CLI.

- ``build_index`` / ``open_index`` (``api.build``): make and open an index;
- ``query_stages``, ``Searcher``, ``search`` (``api.query``): the one query builder and the two
  ways to run it (one query at a time, or a queries file as a batch job);
- ``run_job`` (``api.jobs``): a YAML batch job;
- ``add_documents`` / ``delete_documents`` (``api.update``): update an index in place.

>>> from searchpipe.api import build_index, Searcher
>>> index = build_index(corpus="searchpipe/data/sample/corpus.jsonl", name="sample")  # doctest: +SKIP
>>> Searcher("sample").search("why do onions make you cry", k=3).column("doc_id")  # doctest: +SKIP
"""

from searchpipe.api.build import build_index, open_index
from searchpipe.api.jobs import run_job
from searchpipe.api.query import Searcher, query_stages, search
from searchpipe.api.update import add_documents, delete_documents, read_ids_file
from searchpipe.eval.metrics import evaluate

__all__ = [
    "Searcher",
    "add_documents",
    "build_index",
    "delete_documents",
    "evaluate",
    "open_index",
    "query_stages",
    "read_ids_file",
    "run_job",
    "search",
]
