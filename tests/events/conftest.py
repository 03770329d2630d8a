"""Fixtures of the event bus tests: databases, settings and the sample service."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The worker subprocess and the tests import the sample service by file name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bus_sample import SampleBase  # noqa: E402

from mesh.runtime.storage import Database  # noqa: E402


@pytest.fixture(scope="module")
def postgres_sample_url(postgres_database: Callable[[], str]) -> str:
    """URL of one PostgreSQL database with the sample tables, per test module.

    Dropping a database takes about a second, so the tests of a module share
    one and empty its tables between tests.
    """
    url = postgres_database()
    db = Database(url)
    db.create_all(SampleBase.metadata)
    db.dispose()
    return url


def empty_tables(db: Database) -> None:
    """Delete every row of the sample and event tables and reset their ids."""
    names = ", ".join(f'"{table.name}"' for table in SampleBase.metadata.sorted_tables)
    with db.engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY")


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def sample_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """Empty sample database with the event tables, on SQLite and PostgreSQL."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'sample.db'}")
        db.create_all(SampleBase.metadata)
    else:
        db = Database(request.getfixturevalue("postgres_sample_url"))
        empty_tables(db)
    yield db
    db.dispose()


@pytest.fixture
def postgres_sample_db(postgres_sample_url: str) -> Iterator[Database]:
    """Empty sample database on PostgreSQL, shared with worker subprocesses."""
    db = Database(postgres_sample_url)
    empty_tables(db)
    yield db
    db.dispose()


@pytest.fixture
def unique() -> str:
    """Short random suffix for consumer groups and patient ids of one test."""
    return uuid.uuid4().hex[:10]
