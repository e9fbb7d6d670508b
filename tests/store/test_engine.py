"""The PostgreSQL engine's connection settings: what every connection of the hub runs with."""

from __future__ import annotations

import pytest

from conftest import PG_URL, need_service
from sip_hub.store.engine import CONNECT_TIMEOUT_SECONDS, make_engine


def _settings(url: str) -> tuple[str, str, str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            timeout = conn.exec_driver_sql("SHOW statement_timeout").scalar()
            path = conn.exec_driver_sql("SHOW search_path").scalar()
            dsn = conn.connection.dbapi_connection.info.dsn
    finally:
        engine.dispose()
    return str(timeout), str(path), dsn


@pytest.mark.postgres
def test_a_url_with_options_keeps_the_statement_timeout_and_a_connect_timeout() -> None:
    """A URL with options of its own (a search_path: how a schema is chosen) kept them and
    lost the hub's statement timeout: a runaway query could hold its locks for ever."""
    need_service("PostgreSQL", PG_URL)
    sep = "&" if "?" in PG_URL else "?"
    timeout, path, dsn = _settings(f"{PG_URL}{sep}options=-csearch_path%3Dpublic")
    assert (timeout, path) == ("30s", "public")
    assert f"connect_timeout={CONNECT_TIMEOUT_SECONDS}" in dsn.split()


@pytest.mark.postgres
def test_a_url_that_sets_them_itself_is_followed() -> None:
    need_service("PostgreSQL", PG_URL)
    sep = "&" if "?" in PG_URL else "?"
    timeout, _, dsn = _settings(
        f"{PG_URL}{sep}connect_timeout=3&options=-cstatement_timeout%3D5000")
    assert timeout == "5s"
    assert "connect_timeout=3" in dsn.split()
