"""Typed settings of one service process, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ISSUER = "https://hin.local/dev-issuer"
DEFAULT_AUDIENCE = "hin"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class ServiceSettings:
    """Configuration of one service process; docs/platform.md lists each variable."""

    name: str
    state_dir: Path
    grpc_address: str
    database_url: str
    kafka_bootstrap: str
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    authz_address: str = ""
    jwks_path: Path | None = None
    jwt_issuer: str = DEFAULT_ISSUER
    jwt_audience: str = DEFAULT_AUDIENCE
    instance_id: str = "0"
    log_level: str = "INFO"
    otlp_endpoint: str = ""
    shutdown_grace_seconds: float = 10.0
    #: Secret the inbound sidecar adds to every request; "" trusts any caller's
    #: client certificate header (tests, a service run alone).
    sidecar_token: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls, name: str, environ: Mapping[str, str] | None = None
    ) -> ServiceSettings:
        """Read the settings of service ``name``; raise SettingsError when invalid."""
        env = dict(os.environ if environ is None else environ)
        state_dir = Path(env.get("HIN_STATE_DIR", ".hin")).resolve()
        database_url = env.get("HIN_DATABASE_URL") or (
            f"sqlite:///{state_dir / 'data' / (name + '.db')}"
        )
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if not bootstrap:
            raise SettingsError(
                "KAFKA_BOOTSTRAP_SERVERS is not set; give the broker's host:port "
                "(hin up sets it to the embedded broker)"
            )
        address = env.get("HIN_GRPC_ADDRESS", "127.0.0.1:0")
        _check_loopback(address, "HIN_GRPC_ADDRESS")
        jwks = env.get("HIN_JWKS_PATH")
        prefix = f"HIN_{name.upper()}_"
        return cls(
            name=name,
            state_dir=state_dir,
            grpc_address=address,
            database_url=database_url,
            kafka_bootstrap=bootstrap,
            kafka_config=parse_key_values(env.get("HIN_KAFKA_CONFIG", "")),
            authz_address=env.get("HIN_AUTHZ_ADDRESS", ""),
            jwks_path=Path(jwks) if jwks else state_dir / "keys" / "jwks.json",
            jwt_issuer=env.get("HIN_JWT_ISSUER", DEFAULT_ISSUER),
            jwt_audience=env.get("HIN_JWT_AUDIENCE", DEFAULT_AUDIENCE),
            instance_id=env.get("HIN_INSTANCE_ID", "0"),
            log_level=env.get("HIN_LOG_LEVEL", "INFO").upper(),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            shutdown_grace_seconds=_positive_float(
                env.get("HIN_SHUTDOWN_GRACE_SECONDS", "10"),
                "HIN_SHUTDOWN_GRACE_SECONDS",
            ),
            sidecar_token=_read_secret(env.get("HIN_SIDECAR_TOKEN_FILE", "")),
            extra={
                key[len(prefix) :].lower(): value
                for key, value in env.items()
                if key.startswith(prefix)
            },
        )

    def service_setting(self, key: str, default: str = "") -> str:
        """Return ``HIN_<NAME>_<KEY>``, or ``default`` when unset."""
        return self.extra.get(key.lower(), default)


def parse_key_values(text: str) -> dict[str, str]:
    """Parse ``a=1,b=2`` into a dict; raise SettingsError on a bad pair."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SettingsError(f"invalid key=value pair {item!r} in HIN_KAFKA_CONFIG")
        pairs[key.strip()] = value.strip()
    return pairs


def _read_secret(path: str) -> str:
    if not path:
        return ""
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(
            f"HIN_SIDECAR_TOKEN_FILE={path!r} cannot be read: {exc.strerror}"
        ) from None
    if not secret:
        raise SettingsError(f"HIN_SIDECAR_TOKEN_FILE={path!r} is empty")
    return secret


def _check_loopback(address: str, variable: str) -> None:
    host = address.rpartition(":")[0].strip("[]")
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SettingsError(
            f"{variable}={address!r} is not a loopback address; services listen "
            "on loopback only and are reached through their sidecar"
        )


def _positive_float(text: str, variable: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{variable}={text!r} is not a number") from None
    if value <= 0:
        raise SettingsError(f"{variable}={text!r} must be positive")
    return value
