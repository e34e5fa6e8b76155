"""Files on disk: one cache root, one fetch → verify → publish mechanism, one result store.

- :mod:`~icldistill.artifacts.fetch` — downloads through pip / npm, safe archive extraction,
  hashes, manifests, atomic publication of cache folders;
- :mod:`~icldistill.artifacts.store` — atomic writes, locked append-only JSONL records,
  checkpoints of long computations.
"""
