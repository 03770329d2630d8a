"""``hin billing`` output against an in-process billing service."""

from __future__ import annotations

import argparse
import asyncio
import io

import grpc
import pytest

from hin.billing.v1 import billing_service_pb2_grpc as pb_grpc
from hin.common.v1 import types_pb2 as types
from mesh.network.cli import billing as cli
from tests.billing.conftest import Billing


@pytest.mark.parametrize(
    ("minor_units", "text"),
    [(33333, "333.33 EGP"), (5, "0.05 EGP"), (0, "0.00 EGP"), (-150, "-1.50 EGP")],
)
def test_money_formatted_exactly(minor_units: int, text: str) -> None:
    money = types.Money(currency="EGP", minor_units=minor_units)
    assert cli.format_money(money) == text


def test_subcommands_registered() -> None:
    parser = argparse.ArgumentParser(prog="hin")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["billing", "balance", "pat-1", "--org", "org-9"])
    assert args.billing_action is cli.print_balance
    assert args.patient_id == "pat-1"
    assert args.org == "org-9"


async def test_prices_printed(billing: Billing) -> None:
    def call() -> str:
        out = io.StringIO()
        with grpc.insecure_channel(f"127.0.0.1:{billing.host.port}") as channel:
            cli.print_prices(
                pb_grpc.BillingServiceStub(channel),
                billing.clerk,
                argparse.Namespace(system="urn:hin:code:visit-type"),
                out,
            )
        return out.getvalue()

    lines = (await asyncio.to_thread(call)).splitlines()
    # The four visit types of svc_billing/data/default_prices.json.
    assert len(lines) == 4
    assert lines[2].startswith("urn:hin:code:visit-type|visit-general\t300.00 EGP\t")
