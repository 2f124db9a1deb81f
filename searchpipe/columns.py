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

# chunk: one row per passage of a document; TEXT is then the passage, cut from the
# document's text at [START, END) (character offsets)
PASSAGE = "passage"  # int32, 0-based number of the passage within its document
START = "start"  # int32
END = "end"  # int32
CONTENT_SHA256 = "content_sha256"  # the whole document's digest, on each of its passages

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

# snippet: where the query's terms occur in the hit's passage (TEXT), as character offsets
HIGHLIGHTS = "highlights"  # list<struct<start: int32, end: int32>>

# rerank
RERANK_SCORE = "rerank_score"
FIRST_STAGE_RANK = "first_stage_rank"

# scale-out (searchpipe.engine): a passage's position in the corpus stream, carried by every
# shard so that assembling the index never depends on the order a cluster returns work in
SOURCE_ROW = "source_row"  # int64, 0-based
