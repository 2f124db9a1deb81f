"""Evaluation: run files (``runs``), metrics (``metrics``), run comparison with significance
tests (``compare``) and query latency with a breakdown (``latency``)."""
