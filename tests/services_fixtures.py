"""Fixtures for real services (made visible to every test by one import line in conftest.py):

    postgres           session-wide PostgreSQL server (greenknobs.testing.services.PostgresServer) on
                       127.0.0.1:<free port>: .url, .admin_url, .url_for(db, password=...), .create_database()
    postgres_url       a fresh, empty database on that server for one test: its SQLAlchemy URL
                       (postgresql+psycopg2://greenknobs:<password>@127.0.0.1:<port>/<db>)
    mlflow_server_url  session-wide MLflow tracking server (http://127.0.0.1:<free port>), its backend
                       store a database on that PostgreSQL, artifacts proxied into a temporary folder

Without PostgreSQL installed, tests using them are skipped -- unless GREENKNOBS_REQUIRE_SERVICES=1
(CI sets it), where a missing service fails the test instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from greenknobs.testing.services import PostgresServer, ServiceUnavailable, mlflow_server, postgres_server


def _unavailable(exc: ServiceUnavailable) -> None:
    if os.environ.get("GREENKNOBS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"service required (GREENKNOBS_REQUIRE_SERVICES=1) but unavailable: {exc}")
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[PostgresServer]:
    try:
        with postgres_server(tmp_path_factory.mktemp("postgres")) as server:
            yield server
    except ServiceUnavailable as exc:
        _unavailable(exc)


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    return postgres.create_database()


@pytest.fixture(scope="session")
def mlflow_server_url(postgres: PostgresServer, tmp_path_factory) -> Iterator[str]:
    backend = postgres.create_database("mlflow_backend")
    with mlflow_server(backend, tmp_path_factory.mktemp("mlflow") / "artifacts") as server:
        yield server.url
