"""Analytics over the results store (``docs/analytics.md``).

Reading guide:

- :mod:`~inferstream.analytics.export` — the incremental Parquet export and its state.
- :mod:`~inferstream.analytics.query` — DuckDB views over an export, for every tenant
  or confined to one (the API's saved queries).
- :mod:`~inferstream.analytics.cli` — ``inferstream analytics export|query|report``.
"""
