"""Host one service process: storage, event bus, gRPC server, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import MetaData

from mesh.runtime.authz import Authorizer, RolePolicyAuthorizer
from mesh.runtime.identity import Authenticator, JwtVerifier
from mesh.runtime.interceptors import FinishHook, ServerInterceptor
from mesh.runtime.logging import configure_logging
from mesh.runtime.settings import ServiceSettings
from mesh.runtime.storage import Database
from mesh.runtime.telemetry import build_tracer_provider, install_tracer_provider

logger = logging.getLogger(__name__)

#: grpcio sets SO_REUSEPORT by default, which lets a leftover process silently
#: share the port; HIN wants a second bind to fail.
SERVER_OPTIONS = (("grpc.so_reuseport", 0),)


@dataclass
class BuildContext:
    """Collaborators a service's composition root receives."""

    settings: ServiceSettings
    db: Database
    outbox: Any
    authorizer: Authorizer
    tracer_provider: TracerProvider


@dataclass
class ServiceSpec:
    """Servicers, handlers and background tasks one service adds to its process."""

    name: str
    #: (add_XServicer_to_server, servicer) pairs.
    register: Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any]]
    #: Full names of the gRPC services, for health checking and reflection.
    service_names: Sequence[str]
    #: Alembic location such as "svc_records:migrations"; empty to skip.
    migrations: str = ""
    #: Tables to create directly when there are no migrations (tests).
    metadata: MetaData | None = None
    #: mesh.runtime.events.Handler list for the service's consumer.
    handlers: Sequence[Any] = ()
    #: Kafka topics the consumer subscribes to; derived from handlers if empty.
    topics: Sequence[str] = ()
    #: Extra coroutines that run for the life of the process.
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    #: Called after the gRPC server stopped, before the bus stops.
    on_stop: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: Awaited before each RPC's status is sent; overrides the authorizer's
    #: audit_call. svc_authz uses it to audit its own calls.
    on_call_finish: FinishHook | None = None


BuildFunction = Callable[[BuildContext], ServiceSpec]


class ServiceHost:
    """Start a service in dependency order and stop it in reverse."""

    def __init__(
        self,
        *,
        settings: ServiceSettings,
        build: BuildFunction,
        tracer_provider: TracerProvider | None = None,
        authorizer: Authorizer | None = None,
        authenticator: Authenticator | None = None,
        db: Database | None = None,
    ) -> None:
        self.settings = settings
        self._build = build
        self.tracer_provider = tracer_provider or build_tracer_provider(
            service=settings.name,
            instance_id=settings.instance_id,
            otlp_endpoint=settings.otlp_endpoint,
        )
        self._authorizer = authorizer
        self._authenticator = authenticator
        self.db = db or Database(settings.database_url)
        self.port = 0
        self.spec: ServiceSpec | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._bus: Any = None
        self.authorizer: Authorizer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        """Start everything and return the bound gRPC port; SERVING comes last."""
        from mesh.runtime.events import EventBus

        logger.info("starting service", extra={"service_name": self.settings.name})
        self._bus = EventBus(
            service=self.settings.name,
            settings=self.settings,
            db=self.db,
            tracer_provider=self.tracer_provider,
        )
        self.authorizer = authorizer = self._authorizer or make_authorizer(
            self.settings
        )
        self.spec = spec = self._build(
            BuildContext(
                settings=self.settings,
                db=self.db,
                outbox=self._bus.outbox,
                authorizer=authorizer,
                tracer_provider=self.tracer_provider,
            )
        )
        self._prepare_schema(spec)
        logger.info("database ready", extra={"dialect": self.db.dialect})

        await self._bus.start(handlers=spec.handlers, topics=spec.topics)
        logger.info("event bus started")

        self._server = self._create_server(spec)
        self.port = self._server.add_insecure_port(self.settings.grpc_address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {self.settings.grpc_address}")
        await self._server.start()
        for coroutine in spec.background:
            self._tasks.append(asyncio.create_task(coroutine()))
        for name in ("", *spec.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info("serving", extra={"port": self.port})
        return self.port

    def _prepare_schema(self, spec: ServiceSpec) -> None:
        if spec.migrations:
            self.db.migrate(spec.migrations)
        elif spec.metadata is not None:
            self.db.create_all(spec.metadata)

    def _create_server(self, spec: ServiceSpec) -> grpc.aio.Server:
        authenticator = self._authenticator or make_authenticator(self.settings)
        server = grpc.aio.server(
            interceptors=[
                ServerInterceptor(
                    service=spec.name,
                    authenticator=authenticator,
                    tracer_provider=self.tracer_provider,
                    # An authorizer with an audit_call method (RemoteAuthorizer)
                    # audits the calls that end without an access decision.
                    on_finish=spec.on_call_finish
                    or getattr(self.authorizer, "audit_call", None),
                )
            ],
            options=SERVER_OPTIONS,
        )
        for add, servicer in spec.register:
            add(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*spec.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server,
        )
        return server

    async def stop(self, grace: float | None = None) -> None:
        """Stop in reverse order; each step has a deadline."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self._health.enter_graceful_shutdown()
        logger.info("not serving; draining in-flight calls", extra={"grace_s": grace})
        if self._server is not None:
            await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.spec is not None:
            for hook in self.spec.on_stop:
                await hook()
        if self._bus is not None:
            await self._bus.stop(timeout=grace)
            logger.info("event bus stopped")
        self.tracer_provider.force_flush(int(grace * 1000))
        self.tracer_provider.shutdown()
        self.db.dispose()
        logger.info("stopped")


def make_authenticator(settings: ServiceSettings) -> Authenticator:
    """Verify tokens with the JWKS file when it exists."""
    verifier = None
    if settings.jwks_path is not None and settings.jwks_path.exists():
        verifier = JwtVerifier.from_file(
            settings.jwks_path,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    else:
        logger.warning(
            "no JWKS file; every bearer token will be rejected",
            extra={"jwks_path": str(settings.jwks_path)},
        )
    if not settings.sidecar_token:
        logger.warning(
            "no sidecar token; the client certificate header is trusted from "
            "any local caller (set HIN_SIDECAR_TOKEN_FILE in a network)"
        )
    return Authenticator(verifier=verifier, sidecar_token=settings.sidecar_token)


def make_authorizer(settings: ServiceSettings) -> Authorizer:
    """Ask svc_authz when its address is set, else use role permissions only."""
    if settings.authz_address:
        from mesh.runtime.authz_client import RemoteAuthorizer

        return RemoteAuthorizer(address=settings.authz_address)
    return RolePolicyAuthorizer()


def run_service(name: str, build: BuildFunction) -> None:
    """Entry point of ``python -m svc_<name>``: run until SIGTERM or SIGINT."""
    settings = ServiceSettings.from_env(name)
    configure_logging(
        service=name, level=settings.log_level, instance_id=settings.instance_id
    )
    asyncio.run(_serve(settings, build))


async def _serve(settings: ServiceSettings, build: BuildFunction) -> None:
    host = ServiceHost(settings=settings, build=build)
    install_tracer_provider(host.tracer_provider)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    await stop.wait()
    await host.stop()
