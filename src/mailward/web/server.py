"""Build the web application from the settings and serve it with uvicorn.

One process: the quarantine store and the account database are opened once
and shared by uvicorn's thread pool (both are thread-safe).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from ..config import Settings, parse_host_port
from ..marks import load_release_key
from ..quarantine import open_store
from ..quarantine.links import link_key_path
from ..review.service import QuarantineService
from .accounts import DB_NAME, AccountStore
from .app import Parts, create_app

log = logging.getLogger(__name__)


def open_accounts(settings: Settings) -> AccountStore:
    return AccountStore(Path(settings.state_dir) / DB_NAME, settings.web.lockout_after, settings.web.session_idle)


@contextmanager
def parts_from(settings: Settings) -> Iterator[Parts]:
    """The store, accounts and link key of ``settings``; closed on exit."""
    store = open_store(settings)
    try:
        accounts = open_accounts(settings)
        try:
            yield Parts(
                settings, QuarantineService(settings, store), accounts, load_release_key(link_key_path(settings))
            )
        finally:
            accounts.close()
    finally:
        store.close()


def serve(settings: Settings, listen: str) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both and lets requests in flight finish)."""
    host, port = parse_host_port(listen)
    with parts_from(settings) as parts:
        config = uvicorn.Config(
            create_app(parts),
            host=host,
            port=port,
            log_config=None,
            server_header=False,
            proxy_headers=False,
            access_log=False,
            lifespan="off",
        )
        log.info("quarantine web page on http://%s:%d/", host, port)
        uvicorn.Server(config).run()
