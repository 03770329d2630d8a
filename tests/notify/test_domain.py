"""Rules of svc_notify without storage: recipients, texts, quiet hours, policy."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from hin.authz.v1 import events_pb2 as authz
from hin.common.v1 import types_pb2 as common
from hin.labs.v1 import events_pb2 as labs
from hin.notify.v1 import events_pb2 as events
from hin.notify.v1 import notify_service_pb2 as pb
from mesh.runtime.principal import Principal, PrincipalKind
from svc_notify.domain import policy, rules
from svc_notify.domain.money import format_money
from svc_notify.domain.quiet_hours import QuietWindow
from svc_notify.domain.recipients import (
    InvalidRecipient,
    RecipientKind,
    may_read_stream,
    parse_recipient,
    recipient_principal,
)
from svc_notify.domain.templates import TEMPLATES, footer, render
from svc_notify.errors import InvalidEvent

CAIRO = ZoneInfo("Africa/Cairo")


@pytest.mark.parametrize(
    ("text", "kind", "identifier", "organization"),
    [
        ("practitioner:dr-1", RecipientKind.PRACTITIONER, "dr-1", ""),
        ("patient:0193a-b", RecipientKind.PATIENT, "0193a-b", ""),
        (
            "role:privacy_officer@hosp-a",
            RecipientKind.ROLE,
            "privacy_officer",
            "hosp-a",
        ),
    ],
)
def test_recipient_parses_each_form(
    text: str, kind: RecipientKind, identifier: str, organization: str
) -> None:
    recipient = parse_recipient(text)
    assert recipient.kind is kind
    assert recipient.id == identifier
    assert recipient.organization_id == organization
    assert str(recipient) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dr-1",
        "doctor:dr-1",
        "patient:",
        "role:privacy_officer",
        "role:Privacy@hosp",
        "patient:has space",
    ],
)
def test_recipient_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidRecipient):
        parse_recipient(text)


def test_stream_access_own_recipient_only() -> None:
    doctor = Principal(
        subject="u1",
        kind=PrincipalKind.PERSON,
        roles=frozenset({"doctor"}),
        organization_id="hosp-a",
        practitioner_id="dr-1",
    )
    officer = Principal(
        subject="u2",
        kind=PrincipalKind.PERSON,
        roles=frozenset({"privacy_officer"}),
        organization_id="hosp-a",
    )
    assert may_read_stream(doctor, parse_recipient("practitioner:dr-1"))
    assert not may_read_stream(doctor, parse_recipient("practitioner:dr-2"))
    assert not may_read_stream(doctor, parse_recipient("patient:dr-1"))
    assert may_read_stream(officer, parse_recipient("role:privacy_officer@hosp-a"))
    assert not may_read_stream(officer, parse_recipient("role:privacy_officer@hosp-b"))


def test_recipient_principal_carries_ids() -> None:
    principal = recipient_principal(parse_recipient("patient:p-9"), "hosp-a")
    assert principal.patient_id == "p-9"
    assert principal.roles == frozenset({"patient"})
    assert principal.organization_id == "hosp-a"


def test_every_kind_has_both_languages() -> None:
    kinds = [k for k in pb.NotificationKind.values() if k != 0]
    assert sorted(TEMPLATES) == sorted(kinds)
    for kind in kinds:
        assert sorted(TEMPLATES[kind]) == ["ar", "en"]


@pytest.mark.parametrize("language", ["en", "ar"])
def test_every_template_renders_without_gaps(language: str) -> None:
    for kind in TEMPLATES:
        text = render(kind, language, {}, CAIRO)
        assert "{" not in text.title + text.summary + text.body
        assert text.language == language


def test_render_shows_time_in_zone() -> None:
    text = render(
        pb.NOTIFICATION_KIND_APPOINTMENT_BOOKED,
        "en",
        {"appointment_id": "a-1", "start": "2026-01-15T08:00:00+00:00"},
        CAIRO,
    )
    # Cairo is UTC+2 in January.
    assert text.body == "Your appointment a-1 is on 2026-01-15 10:00 Africa/Cairo."


def test_render_translates_values_to_arabic() -> None:
    text = render(
        pb.NOTIFICATION_KIND_PATIENT_ADMITTED,
        "ar",
        {
            "patient_id": "p-1",
            "ward": "icu",
            "emergency": "yes",
            "admission_id": "adm-1",
        },
        CAIRO,
    )
    assert "(طارئ: نعم)" in text.body


def test_footer_names_reference() -> None:
    assert footer("en", "n-1") == "Open HIN to read the details. Reference: n-1."
    assert footer("ar", "n-1").endswith("المرجع: n-1.")


@pytest.mark.parametrize(
    ("currency", "minor", "expected"),
    [
        ("EGP", 15025, "EGP 150.25"),
        ("egp", 5, "EGP 0.05"),
        ("JPY", 500, "JPY 500"),
        ("KWD", 1234, "KWD 1.234"),
        ("USD", -250, "USD -2.50"),
    ],
)
def test_money_formats_minor_units(currency: str, minor: int, expected: str) -> None:
    assert format_money(currency, minor) == expected


def window(start: time, end: time) -> QuietWindow:
    return QuietWindow(start=start, end=end, zone=CAIRO)


def test_quiet_window_spanning_midnight() -> None:
    night = window(time(22, 0), time(6, 30))
    # 21:30 UTC on 10 January is 23:30 in Cairo: quiet until 06:30 the next
    # morning, which is 04:30 UTC on 11 January.
    late = datetime(2026, 1, 10, 21, 30, tzinfo=UTC)
    early = datetime(2026, 1, 11, 3, 0, tzinfo=UTC)
    evening = datetime(2026, 1, 10, 18, 0, tzinfo=UTC)
    assert night.end_if_quiet(late) == datetime(2026, 1, 11, 4, 30, tzinfo=UTC)
    assert night.end_if_quiet(early) == datetime(2026, 1, 11, 4, 30, tzinfo=UTC)
    assert night.end_if_quiet(evening) is None


def test_quiet_window_within_day() -> None:
    siesta = window(time(14, 0), time(16, 0))
    # Cairo is UTC+3 in July (daylight saving time).
    inside = datetime(2026, 7, 1, 11, 30, tzinfo=UTC)
    assert siesta.end_if_quiet(inside) == datetime(2026, 7, 1, 13, 0, tzinfo=UTC)
    assert siesta.end_if_quiet(datetime(2026, 7, 1, 13, 0, tzinfo=UTC)) is None


def test_quiet_window_empty_when_equal() -> None:
    assert window(time(8), time(8)).end_if_quiet(datetime.now(UTC)) is None


def test_default_channels_add_sms_when_urgent() -> None:
    assert policy.external_channels(None, pb.NOTIFICATION_PRIORITY_NORMAL) == [
        events.CHANNEL_EMAIL
    ]
    assert policy.external_channels(None, pb.NOTIFICATION_PRIORITY_URGENT) == [
        events.CHANNEL_EMAIL,
        events.CHANNEL_SMS,
    ]
    chosen = [events.CHANNEL_WEBHOOK, events.CHANNEL_IN_APP]
    assert policy.external_channels(chosen, pb.NOTIFICATION_PRIORITY_URGENT) == [
        events.CHANNEL_WEBHOOK
    ]


def test_retry_delay_doubles_up_to_cap() -> None:
    delays = [policy.retry_delay(n, 2.0) for n in (1, 2, 3, 4)]
    assert delays == [2.0, 4.0, 8.0, 16.0]
    assert policy.retry_delay(40, 2.0) == 3600.0


def roster(department: str, on_call: list[str], head: str) -> policy.Roster:
    return policy.Roster(department=department, on_call=on_call, head=head)


def test_escalation_picks_next_after_ordering() -> None:
    rosters = [
        roster("", ["dr-x"], "head-default"),
        roster("cardiology", ["dr-a", "dr-b", "dr-c"], "head-cardio"),
    ]
    assert policy.escalation_targets("dr-b", rosters) == {1: "dr-c", 2: "head-cardio"}
    assert policy.escalation_targets("dr-c", rosters) == {1: "dr-a", 2: "head-cardio"}


def test_escalation_falls_back_to_default_roster() -> None:
    rosters = [roster("", ["dr-x", "dr-y"], "head-default")]
    assert policy.escalation_targets("dr-out", rosters) == {
        1: "dr-x",
        2: "head-default",
    }
    assert policy.escalation_targets("dr-out", []) == {1: "", 2: ""}


def test_escalation_alone_on_call_goes_to_head() -> None:
    rosters = [roster("", ["dr-solo"], "head")]
    assert policy.escalation_targets("dr-solo", rosters) == {1: "", 2: "head"}


def test_on_call_prefers_ward_roster() -> None:
    rosters = [roster("", ["dr-x"], ""), roster("icu", ["dr-icu"], "")]
    assert policy.on_call_now("icu", rosters) == "dr-icu"
    assert policy.on_call_now("ward-7", rosters) == "dr-x"


def result(**fields: object) -> labs.TestResult:
    base: dict[str, object] = {
        "result_id": "r-1",
        "patient_id": "p-1",
        "ordering_practitioner_id": "dr-1",
        "test": common.Coding(code="2823-3", display="Potassium"),
        "value": labs.ResultValue(quantity="6.9", unit="mmol/L"),
        "interpretation": labs.INTERPRETATION_CRITICAL_HIGH,
        "critical": True,
    }
    base.update(fields)
    return labs.TestResult(**base)  # type: ignore[arg-type]


def test_critical_result_urgent_to_clinician_only() -> None:
    planned = rules.plan_result(result(), corrected=False, organization_id="h")
    assert [(str(p.recipient), p.kind, p.priority) for p in planned] == [
        (
            "practitioner:dr-1",
            pb.NOTIFICATION_KIND_CRITICAL_RESULT,
            pb.NOTIFICATION_PRIORITY_URGENT,
        ),
        (
            "patient:p-1",
            pb.NOTIFICATION_KIND_TEST_RESULT,
            pb.NOTIFICATION_PRIORITY_NORMAL,
        ),
    ]


def test_corrected_result_uses_corrected_kind() -> None:
    planned = rules.plan_result(
        result(critical=False), corrected=True, organization_id="h"
    )
    assert {p.kind for p in planned} == {pb.NOTIFICATION_KIND_TEST_RESULT_CORRECTED}


def test_result_without_ids_rejected() -> None:
    with pytest.raises(InvalidEvent):
        rules.plan_result(result(result_id=""), corrected=False, organization_id="h")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            labs.ResultValue(quantity="11.0", unit="mmol/L", comparator=">"),
            ">11.0 mmol/L",
        ),
        (labs.ResultValue(text="positive"), "positive"),
        (
            labs.ResultValue(
                coded=common.CodeableConcept(
                    codings=[common.Coding(code="260373001", display="Detected")]
                )
            ),
            "Detected",
        ),
        (labs.ResultValue(), "-"),
    ],
)
def test_result_value_formats(value: labs.ResultValue, expected: str) -> None:
    assert rules.format_result_value(value) == expected


def test_break_glass_goes_to_privacy_role() -> None:
    event = authz.BreakGlassAccessGranted(
        grant_id="g-1", patient_id="p-1", subject="u-1", organization_id="hosp-a"
    )
    [planned] = rules.plan_break_glass(event)
    assert str(planned.recipient) == "role:privacy_officer@hosp-a"
    assert planned.priority == pb.NOTIFICATION_PRIORITY_URGENT


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://10.0.0.5/hook",
        "https://192.168.1.20/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://0.0.0.0/hook",
    ],
)
def test_webhook_to_internal_address_rejected(url: str) -> None:
    from svc_notify.validation import webhook_url_problem

    assert "loopback, private or link-local" in webhook_url_problem(url)


def test_webhook_public_https_accepted() -> None:
    from svc_notify.validation import webhook_url_problem

    assert webhook_url_problem("https://hooks.example.org/hin") == ""


def test_webhook_plain_http_rejected() -> None:
    from svc_notify.validation import webhook_url_problem

    assert webhook_url_problem("http://hooks.example.org/hin") == "must use https"


def test_webhook_loopback_allowed_when_configured() -> None:
    from svc_notify.validation import webhook_url_problem

    problem = webhook_url_problem("http://127.0.0.1:8080/hook", allow_private=True)
    assert problem == ""
