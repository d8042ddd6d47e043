"""The test suite, laid out like the code.

- ``tests/test_*.py``: the base modules (settings, refs).
- ``tests/storage/``: this machine's disk (catalog, blobs and put, opening and root safety,
  processes and liveness, metrics, quarantine, reads under a held write lock).
- ``tests/transfer/``: bytes from elsewhere: HTTP downloads against a misbehaving server, resume,
  retries, TLS, single flight.
- ``tests/ops/``: one verb each: fetch policy, manifests and sync, eviction and cleanup, verify,
  expected hashes, the remote tier.
- ``tests/faces/``: the command line (bad input, signals and pipes), the pytest plugin, the docs.
- ``tests/system/``: cross-cutting properties: the stateful model, stress, SIGKILL crashes,
  concurrency, faults from outside, credentials, the benchmark runner.

Shared helpers live here: ``conftest`` (fixtures; ``run_cas`` runs the command line in-process,
``run_cas_process`` in a child process), ``httpserver``, ``s3servers`` and ``strategies``.
"""
