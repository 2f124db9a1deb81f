"""Column names shared by every stage: the data contract of the pipeline.

A stage declares the columns it reads and the ones it adds using these constants, so a
pipeline can check, before any model loads, that each stage will find what it needs.
"""

from __future__ import annotations

# corpus (ingest)
DOC_ID = "doc_id"
TITLE = "title"
TEXT = "text"
METADATA = "metadata"  # JSON text of any extra fields of the source record

# queries (ingest of a queries file)
QUERY_ID = "query_id"
QUERY_TEXT = "query_text"

# embed
EMBEDDING = "embedding"  # fixed_size_list<float32>[d]

# retrieve: one row per (query, hit)
SCORE = "score"
RANK = "rank"  # 1-based
DOC_ROW = "doc_row"  # row of the hit in the index's doc store

# hybrid retrieval (bm25 + fusion)
DENSE_SCORE = "dense_score"
BM25_SCORE = "bm25_score"

# rerank
RERANK_SCORE = "rerank_score"
FIRST_STAGE_RANK = "first_stage_rank"
