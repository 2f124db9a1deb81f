"""``searchpipe serve``: indexes over HTTP, with micro-batched inference and live version swaps.

One module per job: ``models`` (request and response types, limits), ``snippet`` (the
window of a hit's passage that is shown), ``versions`` (served versions, shared models, the
manifest watcher), ``worker`` (the one inference thread and its micro-batcher), ``app``
(FastAPI routes, auth, body limits, errors); ``static/`` holds the search page.

>>> from searchpipe.serve.app import ServeConfig, create_app  # doctest: +SKIP
>>> app = create_app(ServeConfig(names=["sample"]))  # doctest: +SKIP
"""
