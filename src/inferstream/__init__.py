"""inferstream: trained image models as near-real-time, event-driven pipelines.

A reading guide, from the message outwards:

- :mod:`inferstream.envelope` — the protobuf envelope that travels on every topic.
- :mod:`inferstream.bus` — the bus interface; ``bus.embedded`` (SQLite log, default)
  and ``bus.kafka`` backends, chosen by URL.
- :mod:`inferstream.blobs` — claim-check storage for large payloads.
- :mod:`inferstream.steps` — the step interface and the registry of built-in steps.
- :mod:`inferstream.worker` — a stage's micro-batch loop: consume, run steps,
  produce, commit; retries and dead letters.
- :mod:`inferstream.pipeline` — pipeline files (YAML) and their validation.
- :mod:`inferstream.supervisor` — ``inferstream up``: every stage as supervised processes.
- :mod:`inferstream.store` — the results store (SQLite or PostgreSQL).
- :mod:`inferstream.eggs` — the flagship: in-ovo sexing of chicken embryos from MRI.
- :mod:`inferstream.cli` — the ``inferstream`` command.
"""

__version__ = "0.1.0"
