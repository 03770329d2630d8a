"""Settings of svc_labs, read from the HIN_LABS_* environment variables.

HIN_LABS_MLLP_ADDRESS
    host:port of the MLLP listener, loopback only; "off" disables it.
    Default 127.0.0.1:2575.
HIN_LABS_MLLP_MAX_FRAME_BYTES
    Largest accepted MLLP frame, in bytes. Default 1048576.
HIN_LABS_MLLP_IDLE_TIMEOUT_SECONDS
    Silence between messages before a connection is closed. Default 300.
HIN_LABS_MLLP_FRAME_TIMEOUT_SECONDS
    Time a started frame may take to arrive completely. Default 30.
HIN_LABS_CRITICAL_LIMITS
    JSON file of critical limits per LOINC code. Default: the
    critical_limits.json shipped in this package.
HIN_LABS_FACILITY_ZONES
    MSH-4 facility=IANA zone pairs, for timestamps without a UTC offset.
    Default empty.
HIN_LABS_DEFAULT_ZONE
    Zone of offset-less timestamps from facilities not listed above.
    Default Africa/Cairo.
HIN_LABS_IDENTIFIER_SYSTEMS
    PID-3.4 assigning authority=identifier system pairs, for example
    "CAIRO_GH=urn:hin:id:mrn:org-1". Default empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mesh.runtime.settings import ServiceSettings, SettingsError
from svc_labs.mllp import MllpOptions

DEFAULT_ZONE = "Africa/Cairo"
DEFAULT_MLLP_ADDRESS = "127.0.0.1:2575"
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class LabsSettings:
    """Configuration of svc_labs beyond the common service settings."""

    mllp: MllpOptions | None
    critical_limits_path: Path | None = None
    facility_zones: Mapping[str, ZoneInfo] = field(default_factory=dict)
    default_zone: ZoneInfo = field(default_factory=lambda: ZoneInfo(DEFAULT_ZONE))
    identifier_systems: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_service_settings(cls, settings: ServiceSettings) -> LabsSettings:
        """Read the HIN_LABS_* values; raise SettingsError naming a bad one."""
        value = settings.service_setting
        limits = value("critical_limits")
        return cls(
            mllp=_mllp_options(settings),
            critical_limits_path=Path(limits) if limits else None,
            facility_zones={
                facility: _zone(zone, "HIN_LABS_FACILITY_ZONES")
                for facility, zone in _pairs(
                    value("facility_zones"), "HIN_LABS_FACILITY_ZONES"
                ).items()
            },
            default_zone=_zone(
                value("default_zone", DEFAULT_ZONE), "HIN_LABS_DEFAULT_ZONE"
            ),
            identifier_systems=_pairs(
                value("identifier_systems"), "HIN_LABS_IDENTIFIER_SYSTEMS"
            ),
        )


def _mllp_options(settings: ServiceSettings) -> MllpOptions | None:
    address = settings.service_setting("mllp_address", DEFAULT_MLLP_ADDRESS).strip()
    if address.lower() == "off":
        return None
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    if host not in _LOOPBACK_HOSTS:
        raise SettingsError(
            f"HIN_LABS_MLLP_ADDRESS={address!r} is not a loopback address; the "
            "listener has no caller identity, so it listens on loopback and lab "
            "systems reach it through a tunnel or proxy"
        )
    if not port_text.isdigit() or int(port_text) > 65535:
        raise SettingsError(
            f"HIN_LABS_MLLP_ADDRESS={address!r} has no valid port; give host:port"
        )
    return MllpOptions(
        host=host,
        port=int(port_text),
        max_frame_bytes=int(
            _positive(settings, "mllp_max_frame_bytes", "1048576", integer=True)
        ),
        idle_timeout_seconds=_positive(settings, "mllp_idle_timeout_seconds", "300"),
        frame_timeout_seconds=_positive(settings, "mllp_frame_timeout_seconds", "30"),
    )


def _positive(
    settings: ServiceSettings, key: str, default: str, *, integer: bool = False
) -> float:
    text = settings.service_setting(key, default)
    variable = f"HIN_LABS_{key.upper()}"
    try:
        number = int(text) if integer else float(text)
    except ValueError:
        raise SettingsError(f"{variable}={text!r} is not a number") from None
    if number <= 0:
        raise SettingsError(f"{variable}={text!r} must be positive")
    return number


def _pairs(text: str, variable: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SettingsError(
                f"invalid pair {item!r} in {variable}; write key=value,key=value"
            )
        pairs[key.strip()] = value.strip()
    return pairs


def _zone(name: str, variable: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"{variable} names an unknown time zone {name!r}; use an IANA name "
            "such as Africa/Cairo"
        ) from None
