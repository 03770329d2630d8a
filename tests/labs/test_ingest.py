"""Hl7Ingestor failure paths, with a real database that lacks its tables."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mesh.runtime.events import Outbox
from mesh.runtime.storage import Database
from svc_labs.domain import CriticalLimits
from svc_labs.hl7v2.messages import ReadingRules
from svc_labs.ingest import Hl7Ingestor

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGE = (
    b"MSH|^~\\&|LIS|LAB1|HIN|HIN|20240301101500||ORU^R01|DB-DOWN-1|P|2.5.1\r"
    b"PID|1||MRN-1^^^HOSP^MR\r"
    b"OBR|1|P1|F1|2823-3^Potassium^LN\r"
    b"OBX|1|NM|2823-3^Potassium^LN||4.0|mmol/L|||||F\r"
)


async def test_database_failure_gives_ae_207(tmp_path: Path) -> None:
    # The schema was never migrated, so every query fails.
    db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    ingestor = Hl7Ingestor(
        db=db,
        outbox=Outbox(service="labs"),
        rules=ReadingRules({}, ZoneInfo("Africa/Cairo"), {}),
        limits=CriticalLimits.load(),
    )
    try:
        ack = (await ingestor.handle(MESSAGE)).decode()
    finally:
        db.dispose()
    segments = {line[:3]: line.split("|") for line in ack.split("\r") if line}
    assert segments["MSA"][1] == "AE"
    assert segments["ERR"][3].startswith("207^")
