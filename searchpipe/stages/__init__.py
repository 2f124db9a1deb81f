"""Pipeline stages, one module each: ingest, embed, build, retrieve (dense and BM25), fuse, rerank, cut, write."""
