"""One service's database: SQLite by default, PostgreSQL in production."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, create_engine

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StoreError(Exception):
    """A database operation failed for a reason other than a domain rule."""


class Database:
    """Engine and transactions of one service's database.

    SQLite allows one writer at a time. Every SQLite transaction here starts
    with BEGIN IMMEDIATE, which takes the write lock up front. So two
    transactions that both read and then write can never deadlock on a lock
    upgrade,
    and a check-then-insert inside one transaction is serialized.
    """

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "postgresql" and self.url.drivername == "postgresql":
            self.url = self.url.set(drivername="postgresql+psycopg")
        self.engine: Engine = self._create_engine(echo=echo, pool_size=pool_size)
        self._sqlite_lock = threading.Lock()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def _create_engine(self, *, echo: bool, pool_size: int) -> Engine:
        if self.dialect == "sqlite":
            database = self.url.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                self.url,
                echo=echo,
                connect_args={"check_same_thread": False, "timeout": 30},
            )
            _configure_sqlite(engine)
            return engine
        return create_engine(
            self.url,
            echo=echo,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Yield a session in one transaction; commit on exit, roll back on error."""
        with (
            self._write_guard(),
            Session(self.engine, expire_on_commit=False) as session,
        ):
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(session, *args)`` in one transaction on a worker thread."""

        def call() -> T:
            with self.transaction() as session:
                return fn(session, *args)

        return await asyncio.to_thread(call)

    @contextmanager
    def _write_guard(self) -> Iterator[None]:
        # SQLite's own lock already serializes writers; the process-local lock
        # keeps threads of this process from spinning on busy timeouts.
        if self.is_sqlite:
            with self._sqlite_lock:
                yield
        else:
            yield

    def create_all(self, metadata: MetaData) -> None:
        """Create every table of ``metadata``; for tests, production migrates."""
        metadata.create_all(self.engine)

    def migrate(self, script_location: str) -> None:
        """Upgrade the schema to the newest revision in ``script_location``.

        ``script_location`` is an Alembic location such as
        ``svc_records:migrations``.
        """
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", script_location)
        config.set_main_option("sqlalchemy.url", self.url.render_as_string(False))
        config.attributes["engine"] = self.engine
        try:
            with self._write_guard():
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"migration of {script_location} failed: {exc}") from exc

    def dispose(self) -> None:
        self.engine.dispose()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
