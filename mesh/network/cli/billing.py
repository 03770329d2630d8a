"""``hin billing``: read prices, charges and balances from the running network.

Calls go through the ingress, like ``hin import``, with a development token
of the billing_clerk role. Amounts print as decimal text converted from integer minor
units (two decimal places), never through floating point.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import grpc

from hin.billing.v1 import billing_service_pb2 as pb
from hin.billing.v1 import billing_service_pb2_grpc as pb_grpc
from hin.common.v1 import types_pb2 as types
from mesh.network.clients import (
    ADMIN_ORGANIZATION,
    admin_metadata,
    ingress_channel_sync,
)
from mesh.network.state import NetworkNotRunning

CALL_TIMEOUT_SECONDS = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hin billing prices|charges|balance``."""
    parser = subparsers.add_parser(
        "billing", help="read prices, charges and balances from billing"
    )
    actions = parser.add_subparsers(
        dest="billing_command", metavar="ACTION", required=True
    )
    prices = actions.add_parser("prices", help="print the price list")
    prices.add_argument(
        "--system", default="", help="only codes of this coding system URI"
    )
    prices.set_defaults(func=run, billing_action=print_prices)
    charges = actions.add_parser("charges", help="print a patient's charges")
    charges.add_argument("patient_id", help="HIN patient id")
    add_organization(charges)
    charges.set_defaults(func=run, billing_action=print_charges)
    balance = actions.add_parser(
        "balance", help="print what a patient owes, paid and claimed, per currency"
    )
    balance.add_argument("patient_id", help="HIN patient id")
    add_organization(balance)
    balance.set_defaults(func=run, billing_action=print_balance)


def add_organization(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--org",
        default=ADMIN_ORGANIZATION,
        help="organization (hospital) id the billing clerk works for; access "
        "to another organization's patient needs their consent (default: "
        f"{ADMIN_ORGANIZATION})",
    )


def run(args: argparse.Namespace) -> int:
    """Call billing through the ingress and print the result."""
    try:
        channel = ingress_channel_sync(args.state)
    except NetworkNotRunning as exc:
        print(f"hin billing: {exc}", file=sys.stderr)
        return 1
    with channel:
        stub = pb_grpc.BillingServiceStub(channel)
        # Billing data is read by billing staff; the administrator role
        # carries no billing permission.
        metadata = admin_metadata(
            args.state,
            subject="hin-cli-billing",
            roles=("billing_clerk",),
            organization_id=getattr(args, "org", ADMIN_ORGANIZATION),
        )
        try:
            args.billing_action(stub, metadata, args, sys.stdout)
        except grpc.RpcError as exc:
            code = exc.code().name  # type: ignore[attr-defined]
            details = exc.details()  # type: ignore[attr-defined]
            print(f"hin billing: {code}: {details}", file=sys.stderr)
            return 1
    return 0


def format_date(day: types.Date) -> str:
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"


def format_money(money: types.Money) -> str:
    """Format minor units as ``123.45 EGP`` with integer arithmetic.

    NOTE: Every currency prints with two decimal places, which is right for
    EGP and USD but not for currencies with zero or three.
    """
    sign = "-" if money.minor_units < 0 else ""
    whole, fraction = divmod(abs(money.minor_units), 100)
    return f"{sign}{whole}.{fraction:02d} {money.currency}"


def print_prices(
    stub: pb_grpc.BillingServiceStub,
    metadata: tuple[tuple[str, str], ...],
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    token = ""
    while True:
        page = types.PageRequest(page_size=500, page_token=token)
        response = stub.ListPrices(
            pb.ListPricesRequest(system=args.system, page=page),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        for price in response.prices:
            period = format_date(price.effective_from)
            if price.HasField("effective_to"):
                period += ".." + format_date(price.effective_to)
            print(
                f"{price.service.system}|{price.service.code}\t"
                f"{format_money(price.unit_price)}\t{period}\t{price.service.display}",
                file=out,
            )
        token = response.page.next_page_token
        if not token:
            return


def print_charges(
    stub: pb_grpc.BillingServiceStub,
    metadata: tuple[tuple[str, str], ...],
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    response = stub.ListCharges(
        pb.ListChargesRequest(
            patient_id=args.patient_id, page=types.PageRequest(page_size=500)
        ),
        metadata=metadata,
        timeout=CALL_TIMEOUT_SECONDS,
    )
    for charge in response.charges:
        status = pb.ChargeStatus.Name(charge.status).removeprefix("CHARGE_STATUS_")
        print(
            f"{charge.charge_id}\t{charge.service.code}\t"
            f"{format_money(charge.amount)}\t{status.lower()}",
            file=out,
        )


def print_balance(
    stub: pb_grpc.BillingServiceStub,
    metadata: tuple[tuple[str, str], ...],
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    response = stub.GetPatientBalance(
        pb.GetPatientBalanceRequest(patient_id=args.patient_id),
        metadata=metadata,
        timeout=CALL_TIMEOUT_SECONDS,
    )
    for balance in response.balances:
        print(
            f"{balance.currency}\tbilled {format_money(balance.billed)}\t"
            f"paid {format_money(balance.paid)}\t"
            f"outstanding {format_money(balance.outstanding)}\t"
            f"unbilled {format_money(balance.unbilled)}\t"
            f"claimed {format_money(balance.claimed)}\t"
            f"approved {format_money(balance.claim_approved)}",
            file=out,
        )
