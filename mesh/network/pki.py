"""Mesh certificate authority: a root CA and SPIFFE leaf certificates.

Files live under ``<state>/pki/``::

    ca.pem, ca-key.pem              the root (ten-year lifetime by default)
    <identity>/cert.pem -> data/cert.pem
    <identity>/key.pem  -> data/key.pem
    <identity>/data -> gen-<n>      swapped by one atomic rename on rotation

Envoy watches ``<identity>/`` for moves (SDS with ``watched_directory``), so
the rename of ``data`` makes it read the new certificate and key together,
without a restart and without dropping open connections.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

TRUST_DOMAIN = "hin.local"
CA_LIFETIME = datetime.timedelta(days=3650)
#: Leaf certificates live one day: short enough that a leaked key expires
#: soon, long enough that a development network survives a working day.
LEAF_LIFETIME = datetime.timedelta(hours=24)
#: A leaf with less validity left than this is replaced, a third of its life
#: early, so a missed renewal round still leaves hours to retry.
RENEW_BEFORE = datetime.timedelta(hours=8)
#: Tolerated clock difference between processes checking a new certificate.
CLOCK_SKEW = datetime.timedelta(minutes=5)


def spiffe_id(identity: str) -> str:
    """Return the SPIFFE id of a mesh identity such as ``svc/records``."""
    return f"spiffe://{TRUST_DOMAIN}/{identity}"


def dns_name(identity: str) -> str:
    """Return the DNS SAN of a mesh identity: ``svc/records`` is records.svc.hin.local.

    Envoy matches peers by SPIFFE id; the DNS name exists for gRPC clients
    (``hin status``) that can only check a host name.
    """
    return ".".join(reversed(identity.split("/"))) + f".{TRUST_DOMAIN}"


def service_identity(service: str) -> str:
    """Return the mesh identity of a service: ``svc/<name>``."""
    return f"svc/{service}"


@dataclass(frozen=True)
class LeafFiles:
    """Paths of one identity's certificate and key (stable across rotations)."""

    folder: Path
    cert: Path
    key: Path


class CertificateAuthority:
    """Root CA of the mesh, stored in ``<state>/pki``."""

    def __init__(
        self,
        *,
        folder: Path,
        certificate: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
    ) -> None:
        self.folder = folder
        self.certificate = certificate
        self._key = key

    @property
    def ca_path(self) -> Path:
        """Path of the root certificate in PEM."""
        return self.folder / "ca.pem"

    @classmethod
    def load_or_create(cls, state_dir: Path) -> CertificateAuthority:
        """Load the root from ``<state>/pki``, creating it on first use."""
        folder = state_dir.resolve() / "pki"
        cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC private key")
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return cls(folder=folder, certificate=certificate, key=key)
        authority = cls.create(common_name="HIN mesh root CA")
        folder.mkdir(parents=True, exist_ok=True)
        _write_private(key_path, _key_pem(authority._key))
        cert_path.write_bytes(authority.certificate_pem())
        authority.folder = folder
        logger.info("created mesh root CA", extra={"folder": str(folder)})
        return authority

    @classmethod
    def create(
        cls, *, common_name: str, lifetime: datetime.timedelta = CA_LIFETIME
    ) -> CertificateAuthority:
        """Create a root CA in memory (tests use this for a foreign CA)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(folder=Path("."), certificate=certificate, key=key)

    def certificate_pem(self) -> bytes:
        """Return the root certificate in PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, identity: str, *, lifetime: datetime.timedelta = LEAF_LIFETIME
    ) -> tuple[bytes, bytes]:
        """Issue a leaf for ``identity``; return (certificate PEM, key PEM).

        The SPIFFE id is the only URI SAN (next to one DNS SAN, see
        ``dns_name``). The certificate is valid for both client and server
        authentication because every sidecar is both.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HIN mesh"),
                        x509.NameAttribute(NameOID.COMMON_NAME, identity),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(spiffe_id(identity)),
                        x509.DNSName(dns_name(identity)),
                    ]
                ),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._key.public_key()
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def leaf_files(self, identity: str) -> LeafFiles:
        """Return the stable paths of ``identity``'s certificate and key."""
        folder = self.folder / identity.replace("/", "-")
        return LeafFiles(
            folder=folder, cert=folder / "cert.pem", key=folder / "key.pem"
        )

    def ensure_leaf(
        self, identity: str, *, renew_before: datetime.timedelta = RENEW_BEFORE
    ) -> LeafFiles:
        """Issue ``identity``'s leaf unless one is valid for ``renew_before`` more."""
        files = self.leaf_files(identity)
        if files.cert.exists() and files.key.exists():
            current = x509.load_pem_x509_certificate(files.cert.read_bytes())
            remaining = current.not_valid_after_utc - _now()
            if remaining > renew_before and self._signed_by_me(current):
                return files
        return self.rotate(identity)

    def rotate(
        self, identity: str, *, lifetime: datetime.timedelta = LEAF_LIFETIME
    ) -> LeafFiles:
        """Issue a new leaf for ``identity`` and swap it in with one rename."""
        files = self.leaf_files(identity)
        files.folder.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = self.issue(identity, lifetime=lifetime)

        # Write the new generation completely before anything points at it.
        generation = files.folder / f"gen-{os.urandom(6).hex()}"
        generation.mkdir()
        (generation / "cert.pem").write_bytes(cert_pem)
        _write_private(generation / "key.pem", key_pem)

        # Swap the "data" link with rename(2), which is atomic. Envoy gets one
        # move event in the watched folder and reads both files of one generation.
        link = files.folder / "data"
        previous = os.readlink(link) if link.is_symlink() else None
        staging = files.folder / f".data-{generation.name}"
        staging.symlink_to(generation.name)
        staging.rename(link)
        for name in ("cert.pem", "key.pem"):
            path = files.folder / name
            if not path.is_symlink():
                path.unlink(missing_ok=True)
                path.symlink_to(Path("data") / name)
        if previous and previous != generation.name:
            shutil.rmtree(files.folder / previous, ignore_errors=True)
        logger.info("issued certificate", extra={"identity": identity})
        return files

    def _signed_by_me(self, certificate: x509.Certificate) -> bool:
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def read_spiffe_id(cert_pem: bytes) -> str:
    """Return the SPIFFE id in a certificate's URI SAN, or ''."""
    certificate = x509.load_pem_x509_certificate(cert_pem)
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        return ""
    return next((name for name in names if name.startswith("spiffe://")), "")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
