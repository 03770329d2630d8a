"""Run the whole demo: fresh network, sample data, a hospital day, a report."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from hin.authz.v1 import authz_service_pb2 as authz
from hin.authz.v1 import authz_service_pb2_grpc as authz_grpc
from hin.common.v1 import types_pb2 as types
from hin.notify.v1 import events_pb2 as notify_events
from hin.notify.v1 import notify_service_pb2 as notify
from hin.notify.v1 import notify_service_pb2_grpc as notify_grpc
from mesh.network import cli
from mesh.network.broker import bootstrap_from_environment
from mesh.network.clients import admin_metadata, ingress_channel
from mesh.network.demo.catchers import MailCatcher, SmsCatcher
from mesh.network.demo.day import (
    ESCALATION_SECONDS,
    DayResult,
    DemoFailure,
    HospitalDay,
    format_egp,
)
from mesh.network.demo.report import Report, claim_totals, import_table
from mesh.network.demo.sources import Hl7Message, read_fhir_paths, read_hl7
from mesh.network.importers import SERVICE_ORDER, FhirImporter
from mesh.network.mllp import MllpClient, MllpError
from mesh.network.state import NetworkState
from mesh.network.tracestore import TraceStore
from mesh.runtime.events.dead_letters import read_dead_letters


@dataclass(frozen=True)
class DemoOptions:
    """Input data, state folder and clean-up choice of one demo run."""

    state_dir: Path
    data_dir: Path
    keep: bool = False
    #: Use only the first N bundles (None: all); for quick runs and tests.
    bundle_limit: int | None = None


def run_demo(options: DemoOptions) -> int:
    """Run the demo end to end and return the process exit code."""
    state_dir = options.state_dir.resolve()
    fhir_dir = options.data_dir / "fhir" / "synthea"
    hl7_dir = options.data_dir / "hl7v2"
    for folder in (fhir_dir, hl7_dir):
        if not folder.is_dir():
            print(f"hin demo: sample data folder {folder} not found", file=sys.stderr)
            return 2
    _fresh_state(state_dir)

    print(f"1. starting the network (fresh state in {state_dir})", flush=True)
    mail, sms = MailCatcher(), SmsCatcher()
    os.environ.setdefault("HIN_NOTIFY_ESCALATION_SECONDS", str(ESCALATION_SECONDS))
    os.environ["HIN_NOTIFY_SMTP_HOST"] = "127.0.0.1"
    os.environ["HIN_NOTIFY_SMTP_PORT"] = str(mail.start())
    os.environ["HIN_NOTIFY_SMS_URL"] = sms.start()
    try:
        return _run_network(options, state_dir, fhir_dir, hl7_dir, mail, sms)
    finally:
        mail.stop()
        sms.stop()


def _run_network(
    options: DemoOptions,
    state_dir: Path,
    fhir_dir: Path,
    hl7_dir: Path,
    mail: MailCatcher,
    sms: SmsCatcher,
) -> int:
    if cli.main(["--state", str(state_dir), "up"]) != 0:
        print("hin demo: the network did not start", file=sys.stderr)
        _down(state_dir)
        return 1
    try:
        bundles = sorted(fhir_dir.glob("*.json"))
        if options.bundle_limit is not None:
            bundles = _limited(bundles, options.bundle_limit)
        messages = read_hl7(hl7_dir)
        report = asyncio.run(_walk(state_dir, bundles, messages, mail, sms))
    except (DemoFailure, grpc.aio.AioRpcError, MllpError) as exc:
        print(f"\nhin demo: FAILED: {_describe(exc)}", file=sys.stderr)
        print(f"logs: {state_dir / 'logs'}", file=sys.stderr)
        if not options.keep:
            _down(state_dir)
        return 1
    print(report.render())
    (state_dir / "demo-report.json").write_text(
        json.dumps(report.to_json(), indent=2, ensure_ascii=False, default=str)
    )
    if options.keep:
        print(
            f"\nthe network keeps running; stop it with: hin down --state {state_dir}"
        )
    else:
        _down(state_dir)
    return 1 if report.failed else 0


def _fresh_state(state_dir: Path) -> None:
    """Remove an earlier demo's state; refuse while a network runs from it."""
    network_file = state_dir / "network.json"
    if network_file.exists():
        try:
            state = NetworkState.load(state_dir)
        except Exception:  # noqa: BLE001 - an unreadable file is stale state
            state = None
        if state is not None and state.status not in ("stopped", "failed"):
            from mesh.network.state import process_alive

            if process_alive(state.supervisor_pid):
                raise SystemExit(
                    f"hin demo: a network runs from {state_dir}; run `hin down` first"
                )
    if state_dir.exists():
        shutil.rmtree(state_dir)


def _down(state_dir: Path) -> None:
    cli.main(["--state", str(state_dir), "down"])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


async def _walk(
    state_dir: Path,
    bundles: list[Path],
    messages: list[Hl7Message],
    mail: MailCatcher,
    sms: SmsCatcher,
) -> Report:
    report = Report()
    network = NetworkState.load(state_dir)
    channel = ingress_channel(state_dir)
    try:
        print("2. importing the sample data", flush=True)
        source = read_fhir_paths(bundles)
        summary = await _import(state_dir, network, channel, bundles)
        import_table(source.resources, summary, report)
        observations = summary.get("resources", {}).get("Observation", {})
        report.check(
            "labs took every laboratory Observation of the bundles",
            source.lab_observations,
            observations.get("imported", 0) + observations.get("duplicate", 0),
        )

        acks = await _send_hl7(network, messages)
        _hl7_section(messages, acks, report)

        print("3. a day in the hospital, through the ingress", flush=True)
        mllp = network.mllp_addresses("labs")[0]
        day = await HospitalDay(
            state_dir=state_dir, channel=channel, mllp_address=mllp
        ).run()
        _day_section(day, report)

        print("4. collecting the report", flush=True)
        _billing_section(bundles, day, report)
        await _notify_section(channel, state_dir, report, mail, sms)
        await _audit_section(channel, state_dir, report)
        _dead_letters_section(state_dir, report)
        await asyncio.sleep(2)
        _traces_section(state_dir, day, report)
    finally:
        await channel.close()
    return report


def _limited(bundles: list[Path], limit: int) -> list[Path]:
    # Practitioner and hospital bundles always go in: patients' encounters
    # refer to them.
    directory = [b for b in bundles if b.name.startswith(("practitioner", "hospital"))]
    patients = [b for b in bundles if b not in directory]
    return directory + patients[:limit]


async def _import(
    state_dir: Path,
    network: NetworkState,
    channel: grpc.aio.Channel,
    bundles: list[Path],
) -> dict[str, Any]:
    progress = tqdm(
        total=len(bundles), unit="bundle", desc="   FHIR bundles", file=sys.stdout
    )
    importer = FhirImporter(
        channels={s: channel for s in SERVICE_ORDER if s in network.services},
        metadata=admin_metadata(state_dir),
        on_file_done=lambda path: progress.update(1),
    )
    try:
        summary = await importer.import_paths(bundles)
    finally:
        progress.close()
    if summary.errors:
        raise DemoFailure("import failed: " + "; ".join(summary.errors[:3]))
    return summary.to_json()


async def _send_hl7(network: NetworkState, messages: list[Hl7Message]) -> list[str]:
    address = network.mllp_addresses("labs")[0]
    return await asyncio.to_thread(_send_each, address, messages)


def _send_each(address: str, messages: list[Hl7Message]) -> list[str]:
    codes: list[str] = []
    for message in tqdm(
        messages, unit="msg", desc="   HL7 v2 over MLLP", file=sys.stdout
    ):
        # One connection per file, as separate lab systems would connect.
        try:
            with MllpClient.connect(address) as client:
                codes.append(client.send(message.raw).code)
        except (MllpError, OSError):
            codes.append("")
    return codes


def _hl7_section(messages: list[Hl7Message], codes: list[str], report: Report) -> None:
    by_type: dict[str, Counter[str]] = {}
    for message, code in zip(messages, codes, strict=True):
        by_type.setdefault(message.message_type or "(unreadable)", Counter())[
            code or "none"
        ] += 1
    lines = [
        f"{kind:<14}" + ", ".join(f"{code} {n}" for code, n in sorted(counts.items()))
        for kind, counts in sorted(by_type.items())
    ]
    report.section(f"HL7 v2 over MLLP ({len(messages)} files)", lines)
    report.check(
        "every HL7 message got an ACK", len(messages), sum(1 for c in codes if c)
    )
    unsupported_accepted = sum(
        1
        for message, code in zip(messages, codes, strict=True)
        if not message.is_lab_type and code == "AA"
    )
    report.check("no non-lab message type was accepted", 0, unsupported_accepted)


def _day_section(day: DayResult, report: Report) -> None:
    report.section("a day in the hospital", day.steps)
    report.check(
        "the critical result escalated to the on-call doctor",
        True,
        bool(day.escalated_to),
    )
    report.check(
        "the doctor acknowledged the critical result", True, bool(day.critical_ack)
    )
    report.check(
        "the outside doctor was denied before breaking the glass",
        True,
        day.denied_before_glass,
    )
    report.check(
        "the emergency read after breaking the glass worked",
        True,
        day.emergency_read_ok,
    )
    report.check(
        "patient share plus insurer share equals the invoice",
        day.invoice_total_minor_units,
        day.patient_share_minor_units + day.payer_share_minor_units,
    )


def _billing_section(bundles: list[Path], day: DayResult, report: Report) -> None:
    claims, payments = claim_totals_of(bundles)
    report.section(
        "billing",
        [
            f"historical claims in the bundles: {claims / 100:,.2f} USD claimed, "
            f"{payments / 100:,.2f} USD paid by payers (imported as claims with "
            "their adjudications)",
            f"the day's charges: {format_egp(day.charges_minor_units)}; invoice "
            f"{format_egp(day.invoice_total_minor_units)} = patient "
            f"{format_egp(day.patient_share_minor_units)} + insurer "
            f"{format_egp(day.payer_share_minor_units)}; claim {day.claim_status}",
        ],
    )


def claim_totals_of(bundles: list[Path]) -> tuple[int, int]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for path in bundles:
            (Path(folder) / path.name).symlink_to(path.resolve())
        return claim_totals(Path(folder))


async def _notify_section(
    channel: grpc.aio.Channel,
    state_dir: Path,
    report: Report,
    mail: MailCatcher,
    sms: SmsCatcher,
) -> None:
    stub = notify_grpc.NotifyServiceStub(channel)
    # Deliveries leave svc_notify from a background worker; give the last
    # ones a moment to be sent before counting.
    deadline = time.monotonic() + 20
    per_channel = await _deliveries(stub, state_dir)
    while any(key.endswith(" pending") for key in per_channel):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
        per_channel = await _deliveries(stub, state_dir)
    lines = [f"{key}: {n}" for key, n in sorted(per_channel.items())] or ["none"]
    lines.append(f"e-mails received by the demo's SMTP server: {mail.count}")
    lines.append(f"SMS received by the demo's SMS gateway endpoint: {sms.count}")
    report.section("notifications per channel", lines)
    report.check(
        "every e-mail marked sent reached the SMTP server",
        per_channel.get("email sent", 0),
        mail.count,
    )
    report.check(
        "every SMS marked sent reached the gateway",
        per_channel.get("sms sent", 0),
        sms.count,
    )
    report.check(
        "the patient and clinicians got in-app notifications",
        True,
        per_channel.get("in_app sent", 0) > 0,
    )


async def _deliveries(
    stub: notify_grpc.NotifyServiceStub, state_dir: Path
) -> Counter[str]:
    per_channel: Counter[str] = Counter()
    token = ""
    while True:
        listed = await stub.ListDeliveries(
            notify.ListDeliveriesRequest(
                page=types.PageRequest(page_size=500, page_token=token)
            ),
            metadata=admin_metadata(state_dir),
        )
        for delivery in listed.deliveries:
            name = notify_events.Channel.Name(delivery.channel).removeprefix("CHANNEL_")
            status = notify.DeliveryStatus.Name(delivery.status).removeprefix(
                "DELIVERY_STATUS_"
            )
            per_channel[f"{name.lower()} {status.lower()}"] += 1
        token = listed.page.next_page_token
        if not token:
            return per_channel


async def _audit_section(
    channel: grpc.aio.Channel, state_dir: Path, report: Report
) -> None:
    stub = authz_grpc.AuthzServiceStub(channel)
    verified = await stub.VerifyAuditChain(
        authz.VerifyAuditChainRequest(), metadata=admin_metadata(state_dir)
    )
    report.section(
        "audit trail",
        [
            f"audit records: {verified.records_checked}",
            "hin audit verify: "
            + (
                "chain intact"
                if verified.intact
                else f"BROKEN at {verified.first_broken_audit_id}"
            ),
        ],
    )
    report.check("the audit chain verifies", True, verified.intact)


def _dead_letters_section(state_dir: Path, report: Report) -> None:
    letters = read_dead_letters(bootstrap=bootstrap_from_environment(state_dir))
    report.section("dead letters", [f"{len(letters)} records in .dlq topics"])
    report.check("no dead letters", 0, len(letters))


def _traces_section(state_dir: Path, day: DayResult, report: Report) -> None:
    store = TraceStore(state_dir / "traces")
    lines = []
    found = 0
    for flow, trace_id in day.traces.items():
        spans = store.trace(trace_id)
        services = sorted({s.service for s in spans})
        found += bool(spans)
        lines.append(
            f"{flow:<28} {trace_id}  {len(spans)} spans ({', '.join(services)})"
        )
    lines.append("show one with: hin traces show <trace-id>")
    report.section("traces of the key flows", lines)
    report.check("every key flow has a stored trace", len(day.traces), found)


__all__ = ["DemoOptions", "run_demo"]
