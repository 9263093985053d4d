"""What the tests share, one of each, by part of Mailward.

- ``mail``: the one mail builder and the test payloads (EICAR, GTUBE).
- ``milter``: the milter driven in process on the daemon's own runtime.
- ``stores``: quarantine store fixtures, once per backend (SQLite, PostgreSQL); ``quarantine``:
  envelopes, verdicts, a clock the test moves, an SMTP sink for releases.
- ``incidents``, ``models``, ``reputation``, ``training``, ``unpack``, ``web``: each part's helpers
  (archives and documents built byte by byte, small real models, DKIM keys, CLI runners).

Fixtures used across modules are registered once by ``tests/conftest.py`` (``pytest_plugins``).
"""
