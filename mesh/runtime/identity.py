"""Authenticate callers from gRPC metadata: people by JWT, services by SPIFFE id."""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import jwt

from mesh.runtime.errors import Unauthenticated
from mesh.runtime.principal import ANONYMOUS, Principal, PrincipalKind

logger = logging.getLogger(__name__)

SPIFFE_PREFIX = "spiffe://hin.local/svc/"
ALGORITHMS = ["ES256", "RS256"]
_XFCC_URI = re.compile(r'URI=("?)(spiffe://[^";,]+)\1')


class JwtVerifier:
    """Verify people's tokens: signature from a JWKS, issuer, audience, expiry."""

    def __init__(self, *, jwks: Mapping[str, object], issuer: str, audience: str):
        self._keys = {
            key.key_id: key
            for key in jwt.PyJWKSet.from_dict(dict(jwks)).keys
            if key.key_id
        }
        self._issuer = issuer
        self._audience = audience

    @classmethod
    def from_file(cls, path: Path, *, issuer: str, audience: str) -> JwtVerifier:
        """Load the JWKS at ``path``; raise FileNotFoundError when it is missing."""
        return cls(jwks=json.loads(path.read_text()), issuer=issuer, audience=audience)

    def verify(self, token: str) -> Principal:
        """Return the person the token names; raise Unauthenticated when invalid."""
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(header.get("kid", ""))
            if key is None:
                raise Unauthenticated(
                    "token is signed by an unknown key; get a new token",
                    reason="UNKNOWN_SIGNING_KEY",
                )
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"token audience is not {self._audience!r}", reason="WRONG_AUDIENCE"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                f"token issuer is not {self._issuer!r}", reason="WRONG_ISSUER"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(
                f"invalid token: {exc}", reason="INVALID_TOKEN"
            ) from None
        return principal_from_claims(claims)


def principal_from_claims(claims: Mapping[str, object]) -> Principal:
    """Build a person principal from verified JWT claims."""
    raw_roles = claims.get("roles") or []
    if isinstance(raw_roles, str):
        roles = [raw_roles]
    elif isinstance(raw_roles, list | tuple):
        roles = [str(role) for role in raw_roles]
    else:
        raise Unauthenticated(
            "token claim 'roles' must be a string or a list of strings",
            reason="INVALID_TOKEN",
        )
    return Principal(
        subject=str(claims["sub"]),
        kind=PrincipalKind.PERSON,
        roles=frozenset(roles),
        organization_id=str(claims.get("org", "")),
        practitioner_id=str(claims.get("practitioner_id", "")),
        patient_id=str(claims.get("patient_id", "")),
    )


def spiffe_from_xfcc(header: str) -> str:
    """Return the SPIFFE id in an Envoy x-forwarded-client-cert header, or ''."""
    # Envoy appends one element per hop; the last one is the direct peer.
    matches = _XFCC_URI.findall(header)
    return matches[-1][1] if matches else ""


#: Header the inbound sidecar sets to prove a request passed through it.
SIDECAR_TOKEN_HEADER = "x-hin-sidecar-token"


class Authenticator:
    """Turn request metadata into a Principal.

    A bearer token wins over the sidecar's client certificate header, because a
    service that forwards a person's request acts for that person.

    The service's own port is on loopback, where any local process can reach
    it and send an ``x-forwarded-client-cert`` header of its choosing. With a
    ``sidecar_token``, that header is believed only on requests that carry the
    token, which only the inbound sidecar adds (it overwrites any value a
    client sent). Without one, the header is believed from any caller, which
    suits tests and a service run alone, not a network.
    """

    def __init__(
        self,
        *,
        verifier: JwtVerifier | None,
        trust_xfcc: bool = True,
        sidecar_token: str = "",
    ):
        self._verifier = verifier
        self._trust_xfcc = trust_xfcc
        self._sidecar_token = sidecar_token.encode()

    def authenticate(self, metadata: Mapping[str, str]) -> Principal:
        """Return the caller; raise Unauthenticated for a present but bad token."""
        authorization = metadata.get("authorization", "")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated(
                    "authorization metadata must be 'Bearer <token>'",
                    reason="MALFORMED_AUTHORIZATION",
                )
            if self._verifier is None:
                raise Unauthenticated(
                    "this service has no JWKS to verify tokens with",
                    reason="NO_JWKS",
                )
            return self._verifier.verify(token.strip())
        if self._trust_xfcc and self._from_sidecar(metadata):
            spiffe = spiffe_from_xfcc(metadata.get("x-forwarded-client-cert", ""))
            if spiffe.startswith(SPIFFE_PREFIX):
                name = spiffe[len(SPIFFE_PREFIX) :]
                return Principal(
                    subject=spiffe,
                    kind=PrincipalKind.SERVICE,
                    roles=frozenset({"service"}),
                    service_name=name,
                )
        return ANONYMOUS

    def _from_sidecar(self, metadata: Mapping[str, str]) -> bool:
        if not self._sidecar_token:
            return True
        presented = metadata.get(SIDECAR_TOKEN_HEADER, "").encode()
        return hmac.compare_digest(presented, self._sidecar_token)
