"""``hin token``: mint a development JWT signed by the local key."""

from __future__ import annotations

import argparse

from mesh.network.devkeys import mint_token

ROLES = (
    "doctor",
    "nurse",
    "lab_technician",
    "receptionist",
    "billing_clerk",
    "patient",
    "privacy_officer",
    "administrator",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "token", help="mint a development token (signed by <state>/keys)"
    )
    parser.add_argument(
        "--role",
        action="append",
        required=True,
        choices=ROLES,
        help="role of the person; repeat for several",
    )
    parser.add_argument("--subject", required=True, help="subject (sub claim)")
    parser.add_argument("--org", required=True, help="organization (hospital) id")
    parser.add_argument(
        "--practitioner", default="", help="practitioner id the person is"
    )
    parser.add_argument("--patient", default="", help="patient id the person is")
    parser.add_argument(
        "--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    token = mint_token(
        args.state,
        subject=args.subject,
        roles=args.role,
        organization_id=args.org,
        practitioner_id=args.practitioner,
        patient_id=args.patient,
        lifetime_seconds=args.ttl,
    )
    print(token)
    return 0
