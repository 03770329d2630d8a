"""Enforcement in a calling service through RemoteAuthorizer and the interceptor.

A small servicer (the echo contract) replaces a domain service: its
message names the action and the patient, it validates, then calls
``authorize()`` like every servicer does. Its host runs with a
RemoteAuthorizer pointed at the package's authz service, so decisions,
audit records of calls without a decision, and trace ids all take the real
path.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from opentelemetry.sdk.trace import TracerProvider

from hin.authz.v1 import authz_service_pb2 as pb
from hin.authz.v1 import events_pb2 as events
from hin.echo.v1 import echo_service_pb2 as echo_pb
from hin.echo.v1 import echo_service_pb2_grpc as echo_grpc
from mesh.network.devkeys import mint_token
from mesh.runtime.authz import authorize, authorize_patients
from mesh.runtime.authz_client import RemoteAuthorizer
from mesh.runtime.server import BuildContext, ServiceHost, ServiceSpec
from mesh.runtime.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER, ServiceSettings
from mesh.runtime.validation import Violations
from tests.authz.conftest import SIDECAR_METADATA, AuthzHarness, Person

DOCTOR = Person("e-dr", ("doctor",), "hosp-a", practitioner_id="e-pr")
OTHER_DOCTOR = Person("e-dr-2", ("doctor",), "hosp-a", practitioner_id="e-pr-2")
CLERK = Person("e-clerk", ("billing_clerk",), "hosp-a")
PATIENT = Person("e-pat", ("patient",), "hosp-b", patient_id="e-pb1")
RSA_KID = "rsa-test-key"


class GuardedEcho(echo_grpc.EchoServiceServicer):
    """Echo that authorizes ``<action> <patient id>`` taken from its message."""

    def __init__(self, authorizer: RemoteAuthorizer) -> None:
        self._authorizer = authorizer

    async def Echo(
        self, request: echo_pb.EchoRequest, context: grpc.aio.ServicerContext
    ) -> echo_pb.EchoResponse:
        action, _, patient_id = request.message.partition(" ")
        if action == "search":
            return await self._search(patient_id)
        violations = Violations()
        if not patient_id:
            violations.add("message", "must be '<action> <patient id>'")
        violations.check()
        decision = await authorize(
            self._authorizer, action=action, patient_id=patient_id
        )
        return echo_pb.EchoResponse(
            message=json.dumps(
                {"redact": decision.redact_clinical, "audit_id": decision.audit_id}
            )
        )

    async def _search(self, argument: str) -> echo_pb.EchoResponse:
        # A search returning several patients: each one is decided and only
        # the allowed ones are returned.
        action, _, ids = argument.partition(" ")
        decisions = await authorize_patients(
            self._authorizer, action=action, patient_ids=ids.split(",")
        )
        allowed = [pid for pid, decision in decisions.items() if decision.allowed]
        return echo_pb.EchoResponse(message=json.dumps({"patients": allowed}))


@dataclass
class Guarded:
    host: ServiceHost
    stub: echo_grpc.EchoServiceStub
    channel: grpc.aio.Channel
    state: Path
    rsa_key: rsa.RSAPrivateKey


def _add_rsa_key(state: Path) -> rsa.RSAPrivateKey:
    """Add an RS256 public key to the state's JWKS, next to the ES256 one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_path = state / "keys" / "jwks.json"
    jwks = json.loads(jwks_path.read_text())
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": RSA_KID, "use": "sig", "alg": "RS256"})
    jwks["keys"].append(public)
    jwks_path.write_text(json.dumps(jwks))
    return key


async def _start_guarded(state: Path, authz: AuthzHarness, bootstrap: str) -> Guarded:
    mint_token(state, subject="setup", roles=["doctor"], organization_id="h")
    rsa_key = _add_rsa_key(state)
    settings = ServiceSettings.from_env(
        "echo",
        environ={
            "HIN_STATE_DIR": str(state),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "HIN_GRPC_ADDRESS": "127.0.0.1:0",
        },
    )
    authorizer = RemoteAuthorizer(address=authz.address, metadata=SIDECAR_METADATA)

    def build(ctx: BuildContext) -> ServiceSpec:
        return ServiceSpec(
            name="echo",
            register=[
                (echo_grpc.add_EchoServiceServicer_to_server, GuardedEcho(authorizer))
            ],
            service_names=["hin.echo.v1.EchoService"],
        )

    host = ServiceHost(
        settings=settings,
        build=build,
        authorizer=authorizer,
        tracer_provider=TracerProvider(),
    )
    port = await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Guarded(host, echo_grpc.EchoServiceStub(channel), channel, state, rsa_key)


@pytest.fixture(scope="module")
async def guarded(
    authz: AuthzHarness,
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
) -> AsyncIterator[Guarded]:
    authz.register("e-pa1", "hosp-a")
    authz.register("e-pa2", "hosp-a")
    authz.register("e-pb1", "hosp-b")
    authz.book("e-ap-1", "e-pa1", "e-pr", "hosp-a")
    authz.book("e-ap-2", "e-pb1", "e-pr", "hosp-a")
    # The calling service and the authz service share the state folder's
    # signing key, as in one network.
    state = authz.state
    service = await _start_guarded(state, authz, kafka_bootstrap)
    yield service
    await service.channel.close()
    await service.host.stop(grace=1)


def _trace() -> tuple[str, tuple[tuple[str, str], ...]]:
    trace_id = secrets.token_hex(16)
    parent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    return trace_id, (("traceparent", parent),)


async def _call(
    guarded: Guarded,
    message: str,
    token: str | None,
) -> tuple[str, grpc.StatusCode, str]:
    """Call the guarded echo with a fresh trace id; return it, the code, the body."""
    trace_id, metadata = _trace()
    if token is not None:
        metadata = (*metadata, ("authorization", f"Bearer {token}"))
    try:
        response = await guarded.stub.Echo(
            echo_pb.EchoRequest(message=message), metadata=metadata
        )
    except grpc.aio.AioRpcError as error:
        return trace_id, error.code(), error.details() or ""
    return trace_id, grpc.StatusCode.OK, response.message


async def test_first_request_after_start_audited(
    authz: AuthzHarness,
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
) -> None:
    authz.register("e-first", "hosp-a")
    service = await _start_guarded(authz.state, authz, kafka_bootstrap)
    try:
        trace_id, code, _ = await _call(
            service, "records.clinical.read e-first", authz.token(DOCTOR)
        )
    finally:
        await service.channel.close()
        await service.host.stop(grace=1)
    rows = authz.audit_rows(trace_id=trace_id)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert len(rows) == 1
    assert rows[0].decision == "DENY"
    assert rows[0].patient_id == "e-first"


async def test_two_hundred_calls_two_hundred_records(
    authz: AuthzHarness, guarded: Guarded
) -> None:
    doctor = authz.token(DOCTOR)
    expired = authz.token(DOCTOR, lifetime_seconds=-120)
    # (message, token, expected code, expected decision, expected status_code)
    kinds = [
        ("records.clinical.read e-pa1", doctor, grpc.StatusCode.OK, "ALLOW", ""),
        ("records.clinical.write e-pa1", doctor, grpc.StatusCode.OK, "ALLOW", ""),
        (
            "records.clinical.read e-pa2",
            doctor,
            grpc.StatusCode.PERMISSION_DENIED,
            "DENY",
            "",
        ),
        (
            "records.clinical.read",
            doctor,
            grpc.StatusCode.INVALID_ARGUMENT,
            "NOT_DECIDED",
            "INVALID_ARGUMENT",
        ),
        (
            "records.clinical.read e-pa1",
            expired,
            grpc.StatusCode.UNAUTHENTICATED,
            "NOT_DECIDED",
            "UNAUTHENTICATED",
        ),
        (
            "records.clinical.read e-pa1",
            None,
            grpc.StatusCode.UNAUTHENTICATED,
            "NOT_DECIDED",
            "UNAUTHENTICATED",
        ),
    ]
    expected: dict[str, tuple[str, str]] = {}
    for index in range(200):
        message, token, code, decision, status = kinds[index % len(kinds)]
        trace_id, actual, _ = await _call(guarded, message, token)
        assert actual == code, (index, message)
        expected[trace_id] = (decision, status)

    rows = [row for row in authz.audit_rows() if row.trace_id in expected]
    assert len(rows) == 200
    assert {row.trace_id for row in rows} == set(expected)
    assert {row.trace_id: (row.decision, row.status_code) for row in rows} == expected


async def test_unauthenticated_tokens_are_audited(
    authz: AuthzHarness, guarded: Guarded
) -> None:
    kid = json.loads((authz.state / "keys" / "jwks.json").read_text())["keys"][0]["kid"]
    forged = jwt.encode(
        {
            "iss": DEFAULT_ISSUER,
            "aud": DEFAULT_AUDIENCE,
            "sub": "e-dr",
            "exp": 4_000_000_000,
            "roles": ["doctor"],
        },
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": kid},
    )
    tokens = {
        "INVALID_TOKEN": forged,
        "WRONG_AUDIENCE": authz.token(DOCTOR, audience="another-network"),
        "TOKEN_EXPIRED": authz.token(DOCTOR, lifetime_seconds=-120),
    }
    for reason, token in tokens.items():
        trace_id, code, _ = await _call(guarded, "records.clinical.read e-pa1", token)
        rows = authz.audit_rows(trace_id=trace_id)
        assert code == grpc.StatusCode.UNAUTHENTICATED, reason
        assert len(rows) == 1, reason
        assert rows[0].decision == "NOT_DECIDED", reason
        assert rows[0].status_code == "UNAUTHENTICATED", reason
        assert rows[0].reason_code == reason
        assert rows[0].subject_kind == "anonymous", reason


def _rs256_token(guarded: Guarded, audience: str) -> str:
    return jwt.encode(
        {
            "iss": DEFAULT_ISSUER,
            "aud": audience,
            "sub": "e-dr",
            "exp": 4_000_000_000,
            "roles": ["doctor"],
            "org": "hosp-a",
            "practitioner_id": "e-pr",
        },
        guarded.rsa_key,
        algorithm="RS256",
        headers={"kid": RSA_KID},
    )


async def test_rs256_token_is_accepted(authz: AuthzHarness, guarded: Guarded) -> None:
    trace_id, code, _ = await _call(
        guarded, "records.clinical.read e-pa1", _rs256_token(guarded, DEFAULT_AUDIENCE)
    )
    rows = authz.audit_rows(trace_id=trace_id)
    assert code == grpc.StatusCode.OK
    assert [row.subject for row in rows] == ["e-dr"]
    assert rows[0].decision == "ALLOW"
    assert rows[0].method == "/hin.echo.v1.EchoService/Echo"
    assert rows[0].calling_service == "records"


async def test_rs256_wrong_audience_rejected(
    authz: AuthzHarness, guarded: Guarded
) -> None:
    trace_id, code, _ = await _call(
        guarded, "records.clinical.read e-pa1", _rs256_token(guarded, "elsewhere")
    )
    rows = authz.audit_rows(trace_id=trace_id)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert [row.reason_code for row in rows] == ["WRONG_AUDIENCE"]


async def test_billing_clerk_gets_redaction(
    authz: AuthzHarness, guarded: Guarded
) -> None:
    _, code, body = await _call(
        guarded, "records.demographics.read e-pa2", authz.token(CLERK)
    )
    assert code == grpc.StatusCode.OK
    assert json.loads(body)["redact"] is True


async def test_billing_clerk_clinical_denied(
    authz: AuthzHarness, guarded: Guarded
) -> None:
    _, code, _ = await _call(guarded, "records.clinical.read e-pa2", authz.token(CLERK))
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_patient_other_record_denied(
    authz: AuthzHarness, guarded: Guarded
) -> None:
    token = authz.token(PATIENT)
    _, own, _ = await _call(guarded, "records.clinical.read e-pb1", token)
    _, other, details = await _call(guarded, "records.clinical.read e-pa1", token)
    assert own == grpc.StatusCode.OK
    assert other == grpc.StatusCode.PERMISSION_DENIED
    assert "own record" in details


async def test_revoked_consent_applies_next_request(
    authz: AuthzHarness, guarded: Guarded
) -> None:
    doctor = authz.token(DOCTOR)
    message = "records.clinical.read e-pb1"
    _, before, _ = await _call(guarded, message, doctor)

    granted = await authz.stub.GrantConsent(
        pb.GrantConsentRequest(
            patient_id="e-pb1",
            grantee_organization_id="hosp-a",
            purposes=[events.PURPOSE_TREATMENT],
        ),
        metadata=authz.bearer(PATIENT),
    )
    _, during, _ = await _call(guarded, message, doctor)

    await authz.stub.RevokeConsent(
        pb.RevokeConsentRequest(consent_id=granted.consent.consent_id),
        metadata=authz.bearer(PATIENT),
    )
    _, after, _ = await _call(guarded, message, doctor)

    assert before == grpc.StatusCode.PERMISSION_DENIED
    assert during == grpc.StatusCode.OK
    assert after == grpc.StatusCode.PERMISSION_DENIED


async def test_other_doctor_denied_without_relationship(
    authz: AuthzHarness, guarded: Guarded
) -> None:
    _, code, details = await _call(
        guarded, "records.clinical.read e-pa1", authz.token(OTHER_DOCTOR)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "care relationship" in details


async def test_search_keeps_allowed_patients(
    authz: AuthzHarness, guarded: Guarded
) -> None:
    trace_id, code, body = await _call(
        guarded,
        "search records.demographics.read e-pa1,e-pa2,e-pb1",
        authz.token(DOCTOR),
    )
    rows = authz.audit_rows(trace_id=trace_id)
    assert code == grpc.StatusCode.OK
    # e-pb1 is held by hosp-b; without consent only e-pa1 remains.
    assert json.loads(body)["patients"] == ["e-pa1"]
    assert sorted(row.patient_id for row in rows) == ["e-pa1", "e-pa2", "e-pb1"]
    assert {row.method for row in rows} == {"/hin.echo.v1.EchoService/Echo"}
