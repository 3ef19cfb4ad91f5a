"""Database and tracking URLs: the driver each needs, and passwords kept out of every output.

SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; the project installs a driver and
the URL is normalised to the one that is importable, so ``postgresql://`` just works, and a
missing driver is one line naming the package to install.
"""

from __future__ import annotations

import importlib.util
import re

from greenknobs.errors import ConfigError

DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}


def mask_password(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db (any scheme)."""
    return re.sub(r"(://[^/:@\s]+):[^@/\s]*@", r"\1:***@", url)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def normalise_db_url(url: str, key: str) -> str:
    """A SQLAlchemy URL whose driver is installed; ConfigError (naming ``key`` and the package) if none is."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    base, _, driver = scheme.partition("+")
    if base == "postgres":  # an alias SQLAlchemy 2 no longer accepts
        base = "postgresql"
    if base != "postgresql":
        return f"{base}{'+' + driver if driver else ''}://{rest}"
    if driver:
        if driver in DRIVERS and not _has(driver):
            raise ConfigError(key, f"{mask_password(url)} needs the {driver} driver: pip install '{DRIVERS[driver]}'")
        return f"postgresql+{driver}://{rest}"
    for module in ("psycopg", "psycopg2"):
        if _has(module):
            return f"postgresql+{module}://{rest}"
    raise ConfigError(key, f"{mask_password(url)} needs a PostgreSQL driver: pip install 'psycopg[binary]' "
                           "(or psycopg2-binary)")


def sqlite_path(url: str) -> str | None:
    """The file behind a ``sqlite:///`` URL (None for anything else, or an in-memory database)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return path or None
