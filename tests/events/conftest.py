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


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def sample_db(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_database: Callable[[], str],
) -> Iterator[Database]:
    """Empty sample database with the event tables, on SQLite and PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sample.db'}"
    else:
        url = postgres_database()
    db = Database(url)
    db.create_all(SampleBase.metadata)
    yield db
    db.dispose()


@pytest.fixture
def postgres_sample_db(postgres_database: Callable[[], str]) -> Iterator[Database]:
    """Empty sample database on PostgreSQL, shared with worker subprocesses."""
    db = Database(postgres_database())
    db.create_all(SampleBase.metadata)
    yield db
    db.dispose()


@pytest.fixture
def unique() -> str:
    """Short random suffix for consumer groups and patient ids of one test."""
    return uuid.uuid4().hex[:10]
