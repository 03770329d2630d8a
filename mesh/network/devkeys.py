"""Development signing key and JWKS for people's tokens (``hin token``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.runtime.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER

PRIVATE_KEY_FILE = "dev-signing-key.pem"
JWKS_FILE = "jwks.json"


def ensure_dev_keys(state_dir: Path) -> tuple[Path, Path]:
    """Create the ES256 development key and its JWKS once; return both paths."""
    folder = state_dir / "keys"
    folder.mkdir(parents=True, exist_ok=True)
    key_path, jwks_path = folder / PRIVATE_KEY_FILE, folder / JWKS_FILE
    if key_path.exists() and jwks_path.exists():
        return key_path, jwks_path
    private_key = ec.generate_private_key(ec.SECP256R1())
    key_path.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    public_jwk.update({"kid": uuid.uuid4().hex[:16], "use": "sig", "alg": "ES256"})
    jwks_path.write_text(json.dumps({"keys": [public_jwk]}, indent=2))
    return key_path, jwks_path


def mint_token(
    state_dir: Path,
    *,
    subject: str,
    roles: Iterable[str],
    organization_id: str,
    practitioner_id: str = "",
    patient_id: str = "",
    lifetime_seconds: int = 3600,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
) -> str:
    """Sign a development token with the local key (created when missing)."""
    key_path, jwks_path = ensure_dev_keys(state_dir)
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "exp": now + lifetime_seconds,
        "roles": sorted(set(roles)),
        "org": organization_id,
    }
    if practitioner_id:
        claims["practitioner_id"] = practitioner_id
    if patient_id:
        claims["patient_id"] = patient_id
    private_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ValueError(
            f"{key_path} is not an EC private key; delete it and its JWKS to "
            "create a new ES256 development key"
        )
    return jwt.encode(claims, private_key, algorithm="ES256", headers={"kid": kid})
