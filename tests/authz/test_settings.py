"""HIN_AUTHZ_TRUST_LOOPBACK_CALLERS: decision calls without a service identity."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from hin.authz.v1 import authz_service_pb2 as pb
from hin.authz.v1 import events_pb2 as events
from mesh.runtime.settings import SettingsError
from svc_authz.app import trust_loopback_callers
from tests.authz.conftest import authz_settings, start_authz, stop_authz


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("FALSE", False), ("", False)]
)
def test_trust_setting_parses(tmp_path: Path, text: str, expected: bool) -> None:
    environ = {"HIN_AUTHZ_TRUST_LOOPBACK_CALLERS": text} if text else {}
    settings = authz_settings(tmp_path, "127.0.0.1:9092", **environ)
    assert trust_loopback_callers(settings) is expected


def test_trust_setting_rejects_other_text(tmp_path: Path) -> None:
    settings = authz_settings(
        tmp_path, "127.0.0.1:9092", HIN_AUTHZ_TRUST_LOOPBACK_CALLERS="yes"
    )
    with pytest.raises(SettingsError):
        trust_loopback_callers(settings)


async def test_trusted_loopback_caller_is_audited(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    harness = await start_authz(
        tmp_path,
        kafka_bootstrap,
        consume=False,
        environ={"HIN_AUTHZ_TRUST_LOOPBACK_CALLERS": "true"},
    )
    try:
        response = await harness.stub.Check(
            pb.CheckRequest(
                subject=pb.Subject(subject="anonymous", kind=pb.SUBJECT_KIND_ANONYMOUS),
                action="records.clinical.read",
                patient_id="x-1",
                purpose=events.PURPOSE_TREATMENT,
            )
        )
        rows = harness.audit_rows(audit_id=response.audit_id)
    finally:
        await stop_authz(harness)
    assert response.allowed is False
    assert rows[0].calling_service == "unattested"


async def test_untrusted_loopback_caller_rejected(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    harness = await start_authz(tmp_path, kafka_bootstrap, consume=False)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await harness.stub.Check(
                pb.CheckRequest(
                    subject=pb.Subject(subject="s", kind=pb.SUBJECT_KIND_SERVICE),
                    action="records.clinical.read",
                    purpose=events.PURPOSE_TREATMENT,
                )
            )
    finally:
        await stop_authz(harness)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
