"""The MLLP listener storing into PostgreSQL, including concurrent resends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import select

from svc_labs.store import InboundMessageRow, ResultRow

from .conftest import MllpClient, Running, ack_fields, running_labs
from .test_mllp_acceptance import expected_ack, nm_obx, oru

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.postgres]


@pytest.fixture(scope="module")
async def labs_pg(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    postgres_database: Callable[[], str],
) -> AsyncIterator[Running]:
    state = tmp_path_factory.mktemp("labs-pg")
    async with running_labs(state, kafka_bootstrap, postgres_database()) as running:
        yield running


def count(labs: Running, table: type) -> int:
    with labs.host.db.transaction() as session:
        return int(session.exec(select(func.count()).select_from(table)).one())


async def test_shared_files_on_postgres(labs_pg: Running, shared_data: Path) -> None:
    client = await MllpClient.connect(labs_pg.mllp_port)
    try:
        for path in sorted((shared_data / "hl7v2").glob("*.hl7")):
            ack = ack_fields(await client.send(path.read_bytes()))
            assert ack["MSA"][1] == expected_ack(path.name), path.name
        results = count(labs_pg, ResultRow)
        for path in sorted((shared_data / "hl7v2").glob("*.hl7")):
            await client.send(path.read_bytes())
        assert count(labs_pg, ResultRow) == results
    finally:
        await client.close()


async def test_concurrent_resends_store_once(labs_pg: Running) -> None:
    message = oru("PG-RACE-1", [nm_obx(i, "140") for i in range(1, 6)]).encode()
    clients = [await MllpClient.connect(labs_pg.mllp_port) for _ in range(4)]
    before = count(labs_pg, ResultRow)
    try:
        acks = await asyncio.gather(*(c.send(message) for c in clients))
    finally:
        for client in clients:
            await client.close()
    assert [ack_fields(a)["MSA"][1] for a in acks] == ["AA"] * 4
    assert count(labs_pg, ResultRow) == before + 5
    with labs_pg.host.db.transaction() as session:
        rows = session.exec(
            select(InboundMessageRow).where(InboundMessageRow.control_id == "PG-RACE-1")
        ).all()
    assert len(rows) == 1
