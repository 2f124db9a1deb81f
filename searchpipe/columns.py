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

# queries (ingest of a queries file): QUERY_ID and TEXT
QUERY_ID = "query_id"

# embed
EMBEDDING = "embedding"  # fixed_size_list<float32>[d]
TOKENS = "tokens"  # int32: the text's length in the model's tokens, before truncation

# retrieve: one row per (query, hit); the query's text travels along as QUERY_TEXT
QUERY_TEXT = "query_text"
SCORE = "score"
RANK = "rank"  # 1-based
DOC_ROW = "doc_row"  # row of the hit in the index's doc store
# hybrid retrieval adds one raw score column per source: "<source>_score" (dense_score, ...)

# rerank
RERANK_SCORE = "rerank_score"
FIRST_STAGE_RANK = "first_stage_rank"
