"""The index format: one house for everything an index folder holds.

- ``layout``: the files of a version folder and the schemas of its Arrow files;
- ``store``: ``Index`` (read a committed version), ``IndexWriter`` (stage and commit one
  atomically), the manifest, ``verify``/``check_index``;
- ``faiss``: which FAISS factory, how to make and train it;
- ``ann``: recall against exact search, and the efSearch/nprobe that reaches a target;
- ``bm25``: the lexical index beside the vectors.

Updates in place (add, delete) compose these with the embed stage: ``searchpipe.api.update``.
"""

from searchpipe.index.store import Index, IndexWriter, check_index, index_dir, read_manifest

__all__ = ["Index", "IndexWriter", "check_index", "index_dir", "read_manifest"]
