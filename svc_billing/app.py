"""Composition root of the billing service.

Settings (besides the platform's):

- ``HIN_BILLING_VAT_RATE``: VAT added to every invoice line, in percent with
  at most two decimals (``14``). Default ``0``.
- ``HIN_BILLING_PRICE_LIST``: JSON price list whose missing entries are
  loaded on start. Default: ``svc_billing/data/default_prices.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from hin.billing.v1 import billing_service_pb2_grpc as pb_grpc
from mesh.runtime.server import BuildContext, BuildFunction, ServiceSpec
from mesh.runtime.settings import SettingsError
from svc_billing import domain, prices, store
from svc_billing.handlers import build_handlers
from svc_billing.payer import Payer, PlanRulesPayer
from svc_billing.servicer import BillingServicer

logger = logging.getLogger(__name__)

MIGRATIONS = "svc_billing:migrations"


def make_build(*, payer: Payer | None = None) -> BuildFunction:
    """Return a build function that sends claims to ``payer``.

    The default payer adjudicates by the plan rules billing holds.
    """

    def build_with_payer(ctx: BuildContext) -> ServiceSpec:
        settings = ctx.settings
        vat_text = settings.service_setting("vat_rate", "0")
        try:
            vat_basis_points = domain.parse_rate_basis_points(vat_text)
        except ValueError as exc:
            raise SettingsError(f"HIN_BILLING_VAT_RATE: {exc}") from None
        price_list = Path(
            settings.service_setting("price_list", "") or prices.default_price_list()
        )
        if not price_list.is_file():
            raise SettingsError(
                f"HIN_BILLING_PRICE_LIST={str(price_list)!r} is not a file; give "
                "the path of a JSON price list or unset it to use the default"
            )

        # The host migrates after build() returns and starts the consumer
        # right after. The price list must be in place before the first event
        # is handled, so the schema is migrated here and the host's own
        # migration finds nothing to do.
        ctx.db.migrate(MIGRATIONS)
        load_prices(ctx, price_list)

        servicer = BillingServicer(
            db=ctx.db,
            outbox=ctx.outbox,
            authorizer=ctx.authorizer,
            payer=payer or PlanRulesPayer(),
            vat_basis_points=vat_basis_points,
        )
        return ServiceSpec(
            name="billing",
            register=[(pb_grpc.add_BillingServiceServicer_to_server, servicer)],
            service_names=["hin.billing.v1.BillingService"],
            migrations=MIGRATIONS,
            metadata=store.BillingBase.metadata,
            handlers=build_handlers(ctx.outbox),
        )

    return build_with_payer


def load_prices(ctx: BuildContext, path: Path) -> None:
    """Load the price list file's missing entries; a second start adds none."""
    try:
        with ctx.db.transaction() as session:
            inserted = prices.load_price_list(session, path)
    except IntegrityError:
        # Another replica loaded the same entries at the same moment.
        logger.info("price list loaded by another replica")
        return
    logger.info(
        "price list checked", extra={"path": str(path), "inserted": inserted}
    )


build = make_build()
