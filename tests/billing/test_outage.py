"""Billing killed with SIGKILL catches up from Kafka and charges exactly once.

The events are produced by upstream outboxes while no billing process runs,
so the upstream side of the outage succeeds by construction: nothing on it
calls billing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.network.broker import free_loopback_port
from mesh.network.devkeys import ensure_dev_keys
from tests.billing.upstream import (
    Upstream,
    appointment_completed,
    result_published,
    wait_until,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


class BillingProcess:
    """``python -m svc_billing`` as a child process on a fixed port."""

    def __init__(self, *, state: Path, bootstrap: str) -> None:
        self.state = state
        self.port = free_loopback_port()
        self.database = state / "billing.db"
        self.environ = {
            **os.environ,
            "HIN_GRPC_ADDRESS": f"127.0.0.1:{self.port}",
            "HIN_DATABASE_URL": f"sqlite:///{self.database}",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "HIN_STATE_DIR": str(state),
            "HIN_JWKS_PATH": str(state / "keys" / "jwks.json"),
            "HIN_LOG_LEVEL": "WARNING",
            "HIN_BILLING_EVENT_MAX_ATTEMPTS": "2",
            # A consumer group of its own, so that no consumer left over from
            # an earlier test keeps partitions of a shared group.
            "HIN_KAFKA_CONFIG": f"group.id=hin.billing.outage-{uuid.uuid4().hex[:8]}",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.state / "billing.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "svc_billing"],
            cwd=ROOT,
            env=self.environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def wait_serving(self) -> None:
        async def serving() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.state / "billing.log").read_text(errors="replace")
                raise AssertionError(f"billing exited early:\n{log[-3000:]}")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                try:
                    response = await stub.Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                except grpc.aio.AioRpcError:
                    return False
                return response.status == health_pb2.HealthCheckResponse.SERVING

        await wait_until(serving, timeout=90, what="billing to serve")

    def charges_for(self, patients: list[str]) -> list[str]:
        """Return the source event ids of the patients' charges, read directly."""
        if not self.database.exists():
            return []
        marks = ",".join("?" for _ in patients)
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT source_event_id FROM billing_charges "
                f"WHERE patient_id IN ({marks})",
                patients,
            ).fetchall()
        return [row[0] for row in rows]


@pytest.fixture
def process(tmp_path: Path, kafka_bootstrap: str) -> Iterator[BillingProcess]:
    ensure_dev_keys(tmp_path)
    billing = BillingProcess(state=tmp_path, bootstrap=kafka_bootstrap)
    yield billing
    billing.stop()


async def test_killed_billing_catches_up(
    process: BillingProcess, tmp_path: Path, kafka_bootstrap: str
) -> None:
    appointments_side = Upstream(
        service="appointments", folder=tmp_path, bootstrap=kafka_bootstrap
    )
    labs_side = Upstream(service="labs", folder=tmp_path, bootstrap=kafka_bootstrap)
    patients = [f"pat-{uuid.uuid4().hex[:10]}" for _ in range(10)]
    try:
        # Billing runs and charges a first visit, so its consumer group has
        # joined and committed before the outage.
        process.start()
        await process.wait_serving()
        [warmup] = await asyncio.to_thread(
            appointments_side.publish,
            [(appointment_completed(patients[0]), patients[0])],
        )

        async def warmup_charged() -> bool:
            return warmup in process.charges_for(patients)

        await wait_until(warmup_charged, what="the warm-up charge")
        process.kill()

        # The outage: 50 completed visits and 50 published results.
        visits = await asyncio.to_thread(
            appointments_side.publish,
            [(appointment_completed(patients[i % 10]), patients[i % 10])
             for i in range(50)],
        )
        results = await asyncio.to_thread(
            labs_side.publish,
            [(result_published(patients[i % 10]), patients[i % 10])
             for i in range(50)],
        )
        assert len(set(visits + results)) == 100

        process.start()
        await process.wait_serving()

        async def all_charged() -> bool:
            return len(process.charges_for(patients)) >= 101

        await wait_until(all_charged, timeout=120, what="101 charges")
        charged = process.charges_for(patients)
        outage_charges = [c for c in charged if c != warmup]
        assert len(outage_charges) == 100
        assert set(outage_charges) == set(visits + results)
    finally:
        appointments_side.close()
        labs_side.close()

