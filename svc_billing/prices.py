"""Price list: load the shipped file and add prices with effective dates."""

from __future__ import annotations

import datetime as dt
import json
from importlib import resources
from pathlib import Path

from sqlmodel import Session, select

from svc_billing import store
from svc_billing.errors import InvalidState
from svc_billing.ledger import new_id


def default_price_list() -> Path:
    """Return the path of the price list shipped with the service."""
    return Path(str(resources.files("svc_billing") / "data" / "default_prices.json"))


def load_price_list(session: Session, path: Path) -> int:
    """Insert the file's entries that the price list lacks; return how many.

    An entry is identified by system, code and effective date, so loading the
    same file again inserts nothing.
    """
    document = json.loads(path.read_text(encoding="utf-8"))
    inserted = 0
    for entry in document["entries"]:
        day = dt.date.fromisoformat(entry["effective_from"])
        existing = session.exec(
            select(store.PriceRow).where(
                store.PriceRow.system == entry["system"],
                store.PriceRow.code == entry["code"],
                store.PriceRow.effective_from == day,
            )
        ).first()
        if existing is not None:
            continue
        unit = entry["unit_minor"]
        if not isinstance(unit, int) or unit < 0:
            raise ValueError(
                f"price of {entry['system']}|{entry['code']} in {path} must be a "
                f"whole number of minor units, zero or more; found {unit!r}"
            )
        add_price(
            session,
            system=entry["system"],
            code=entry["code"],
            display=entry.get("display", ""),
            currency=entry["currency"],
            unit_minor=unit,
            effective_from=day,
        )
        inserted += 1
    return inserted


def add_price(
    session: Session,
    *,
    system: str,
    code: str,
    display: str,
    currency: str,
    unit_minor: int,
    effective_from: dt.date,
) -> store.PriceRow:
    """Add a price; an earlier entry still in effect on its start day ends there.

    Setting the same price from the same day again returns the stored entry,
    so a retried call changes nothing.
    """
    rows = store.prices_for(session, system, code)
    following = [row for row in rows if row.effective_from > effective_from]
    for row in rows:
        same_price = row.currency == currency and row.unit_minor == unit_minor
        if row.effective_from == effective_from and same_price:
            return row
        if row.effective_from == effective_from:
            raise InvalidState(
                f"{system}|{code} already has a price from {effective_from}; "
                "choose another effective date",
                reason="PRICE_EXISTS",
            )
        if row.effective_from < effective_from and (
            row.effective_to is None or row.effective_to > effective_from
        ):
            row.effective_to = effective_from
            session.add(row)
    row = store.PriceRow(
        price_id=new_id(),
        system=system,
        code=code,
        display=display,
        currency=currency,
        unit_minor=unit_minor,
        effective_from=effective_from,
        effective_to=min(r.effective_from for r in following) if following else None,
    )
    session.add(row)
    session.flush()
    return row
