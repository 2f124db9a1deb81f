"""Pipeline stages, one module each: ingest, embed, build, retrieve, rerank, write."""
