"""Training our own models (reranker, embedder) and tuning search settings on dev qrels.

Heavy imports stay inside the functions; import the submodules directly:
``searchpipe.training.train`` (data, mining, trainers) and ``searchpipe.training.tune``.
"""
