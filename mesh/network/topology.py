"""The one description of the mesh: services, replicas and the call policy.

Every Envoy configuration (``mesh.network.envoy``) and every Kubernetes
manifest (``mesh.network.k8s``) is generated from a ``Topology``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

#: Method names that only read, so a caller may retry them safely.
READ_METHOD_PATTERN = r"(Get|List|Search|Check|Read|Lookup|Explain)[A-Za-z0-9]*"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class TopologyError(ValueError):
    """The topology is inconsistent; the message names the service or rule."""


@dataclass(frozen=True)
class ServiceDef:
    """One service of the mesh and how its process is started."""

    name: str
    #: Module run as ``python -m <module>``.
    module: str
    #: Full names of the gRPC services it serves, e.g. hin.labs.v1.LabsService.
    grpc_services: tuple[str, ...]
    replicas: int = 1
    #: Regular expression of method names that are safe to retry.
    idempotent_methods: str = READ_METHOD_PATTERN
    #: Server-streaming methods as "package.Service/Method": no route timeout.
    streaming_methods: tuple[str, ...] = ()
    #: Whether each replica gets an MLLP (HL7 v2) listener of its own.
    mllp: bool = False
    #: Extra environment variables for the service process.
    environment: Mapping[str, str] = field(default_factory=dict)

    def path_prefixes(self) -> tuple[str, ...]:
        """Return the HTTP/2 path prefixes of the service's gRPC methods."""
        return tuple(f"/{name}/" for name in self.grpc_services)

    def streaming_paths(self) -> tuple[str, ...]:
        """Return the HTTP/2 paths of the server-streaming methods."""
        return tuple(f"/{method}" for method in self.streaming_methods)

    def idempotent_path_regex(self) -> str:
        """Return a regular expression matching the paths of idempotent methods."""
        services = "|".join(re.escape(name) for name in self.grpc_services)
        return f"^/({services})/{self.idempotent_methods}$"

    def importable(self) -> bool:
        """Return whether the service's module can be imported here."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            return False


@dataclass(frozen=True)
class CallRule:
    """Service ``caller`` may call ``target``'s methods under these prefixes."""

    caller: str
    target: str
    #: Path prefixes such as "/hin.authz.v1.AuthzService/Check".
    method_prefixes: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    """Services, replicas and the call policy between them."""

    services: tuple[ServiceDef, ...]
    calls: tuple[CallRule, ...] = ()

    def __post_init__(self) -> None:
        names = [service.name for service in self.services]
        duplicates = {name for name in names if names.count(name) > 1}
        if duplicates:
            raise TopologyError(f"services defined twice: {sorted(duplicates)}")
        for service in self.services:
            if not re.fullmatch(r"[a-z][a-z0-9]*", service.name):
                raise TopologyError(
                    f"service name {service.name!r} must be lowercase letters "
                    "and digits, starting with a letter"
                )
            if service.replicas < 1:
                raise TopologyError(
                    f"service {service.name!r} needs at least 1 replica, "
                    f"got {service.replicas}"
                )
        for rule in self.calls:
            for end in (rule.caller, rule.target):
                if end not in names:
                    raise TopologyError(
                        f"call rule {rule.caller} -> {rule.target} names unknown "
                        f"service {end!r}"
                    )

    def service(self, name: str) -> ServiceDef:
        """Return the service called ``name``; raise TopologyError if unknown."""
        for service in self.services:
            if service.name == name:
                return service
        known = ", ".join(s.name for s in self.services)
        raise TopologyError(f"unknown service {name!r}; known services: {known}")

    def upstreams(self, caller: str) -> tuple[str, ...]:
        """Return the services ``caller`` may call, in topology order."""
        targets = {rule.target for rule in self.calls if rule.caller == caller}
        return tuple(s.name for s in self.services if s.name in targets)

    def callers(self, target: str) -> dict[str, tuple[str, ...]]:
        """Return {caller: allowed path prefixes} for calls into ``target``."""
        allowed: dict[str, tuple[str, ...]] = {}
        for rule in self.calls:
            if rule.target == target:
                allowed[rule.caller] = (
                    allowed.get(rule.caller, ()) + rule.method_prefixes
                )
        return allowed

    def with_replicas(self, counts: Mapping[str, int]) -> Topology:
        """Return a copy with the replica counts in ``counts`` changed."""
        for name in counts:
            self.service(name)
        return replace(
            self,
            services=tuple(
                replace(s, replicas=counts.get(s.name, s.replicas))
                for s in self.services
            ),
        )

    def only(self, names: Iterable[str]) -> Topology:
        """Return the topology restricted to ``names`` and the rules among them."""
        keep = set(names)
        return Topology(
            services=tuple(s for s in self.services if s.name in keep),
            calls=tuple(r for r in self.calls if r.caller in keep and r.target in keep),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready form, read back by ``from_dict``."""
        return {
            "services": [
                {
                    "name": s.name,
                    "module": s.module,
                    "grpc_services": list(s.grpc_services),
                    "replicas": s.replicas,
                    "idempotent_methods": s.idempotent_methods,
                    "streaming_methods": list(s.streaming_methods),
                    "mllp": s.mllp,
                    "environment": dict(s.environment),
                }
                for s in self.services
            ],
            "calls": [
                {
                    "caller": r.caller,
                    "target": r.target,
                    "method_prefixes": list(r.method_prefixes),
                }
                for r in self.calls
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Topology:
        """Build a topology from the form ``to_dict`` returns."""
        try:
            services = tuple(
                ServiceDef(
                    name=s["name"],
                    module=s["module"],
                    grpc_services=tuple(s["grpc_services"]),
                    replicas=int(s.get("replicas", 1)),
                    idempotent_methods=s.get("idempotent_methods", READ_METHOD_PATTERN),
                    streaming_methods=tuple(s.get("streaming_methods", ())),
                    mllp=bool(s.get("mllp", False)),
                    environment=dict(s.get("environment", {})),
                )
                for s in data["services"]
            )
            calls = tuple(
                CallRule(
                    caller=r["caller"],
                    target=r["target"],
                    method_prefixes=tuple(r["method_prefixes"]),
                )
                for r in data.get("calls", ())
            )
        except (KeyError, TypeError) as exc:
            raise TopologyError(f"invalid topology description: missing {exc}") from exc
        return cls(services=services, calls=calls)

    @classmethod
    def load(cls, path: Path) -> Topology:
        """Read a topology from a JSON file written with ``to_dict``."""
        return cls.from_dict(json.loads(path.read_text()))


def parse_replicas(items: Iterable[str]) -> dict[str, int]:
    """Parse ``["labs=3", ...]`` into {"labs": 3}; raise TopologyError if bad."""
    counts: dict[str, int] = {}
    for item in items:
        name, sep, number = item.partition("=")
        if not sep or not number.isdigit() or int(number) < 1:
            raise TopologyError(
                f"invalid replica count {item!r}; write SERVICE=N with N >= 1, "
                "for example labs=3"
            )
        counts[name.strip()] = int(number)
    return counts


def _authz_rule(caller: str) -> CallRule:
    # Every service calls authz for decisions (Check, CheckBatch), for audit
    # records of calls that ended without a decision (RecordAudit) and for
    # consent reads. No other call crosses services over gRPC, because
    # everything else travels as events.
    return CallRule(
        caller=caller,
        target="authz",
        method_prefixes=(
            "/hin.authz.v1.AuthzService/Check",
            "/hin.authz.v1.AuthzService/RecordAudit",
            "/hin.authz.v1.AuthzService/Get",
            "/hin.authz.v1.AuthzService/List",
        ),
    )


def default_topology() -> Topology:
    """Return HIN's six services plus the echo service used for diagnostics."""
    services = (
        ServiceDef("authz", "svc_authz", ("hin.authz.v1.AuthzService",)),
        ServiceDef("records", "svc_records", ("hin.records.v1.RecordsService",)),
        ServiceDef(
            "appointments",
            "svc_appointments",
            ("hin.appointments.v1.AppointmentsService",),
        ),
        ServiceDef("labs", "svc_labs", ("hin.labs.v1.LabsService",), mllp=True),
        ServiceDef("billing", "svc_billing", ("hin.billing.v1.BillingService",)),
        ServiceDef(
            "notify",
            "svc_notify",
            ("hin.notify.v1.NotifyService",),
            streaming_methods=("hin.notify.v1.NotifyService/Subscribe",),
        ),
        ServiceDef(
            "echo",
            "mesh.runtime.echo",
            ("hin.echo.v1.EchoService",),
            streaming_methods=("hin.echo.v1.EchoService/EchoStream",),
        ),
    )
    callers = ("records", "appointments", "labs", "billing", "notify", "echo")
    return Topology(services=services, calls=tuple(_authz_rule(c) for c in callers))
