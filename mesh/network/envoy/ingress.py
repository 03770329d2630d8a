"""Envoy configuration of the ingress: grpc-web, CORS, JWT and routing.

Browsers speak grpc-web (HTTP/1.1 or HTTP/2); the hin command and hospital
systems speak native gRPC. Both reach every service's sidecar over mTLS with
the ingress's own mesh identity, carrying the caller's bearer token, which
the service verifies again.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path

from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap
from envoy_data_plane.envoy.config.core.v3 import DataSource, TrafficDirection
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    HeaderMatcher,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.filters.http.cors.v3 import Cors, CorsPolicy
from envoy_data_plane.envoy.extensions.filters.http.grpc_web.v3 import GrpcWeb
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn.v3 import (
    JwtAuthentication,
    JwtProvider,
    JwtRequirement,
    RequirementRule,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: E501
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
)
from envoy_data_plane.envoy.type.matcher.v3 import RegexMatcher, StringMatcher

from mesh.network.envoy import common
from mesh.network.envoy.routes import UNARY_TIMEOUT, service_routes, untraced
from mesh.network.pki import dns_name, service_identity
from mesh.network.topology import HEALTH_PREFIX, REFLECTION_PREFIXES, Topology

JWT_PROVIDER = "hin-dev"
#: Request header that picks the service a health check is for; a health
#: check's path (/grpc.health.v1.Health/Check) is the same for every service.
SERVICE_HEADER = "x-hin-service"
#: Headers a browser may send; grpc-web clients add x-grpc-web and
#: x-user-agent, and traceparent carries W3C trace context.
ALLOW_HEADERS = (
    "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,"
    f"traceparent,tracestate,{SERVICE_HEADER}"
)
#: Response headers a browser may read. Without them an error sent before any
#: message (trailers-only, such as PERMISSION_DENIED) reaches the page with
#: no status and no message.
EXPOSE_HEADERS = "grpc-status,grpc-message,grpc-status-details-bin"


def build_ingress(
    *,
    topology: Topology,
    listen: str,
    admin: str,
    service_endpoints: Mapping[str, Sequence[str]],
    secrets: common.SecretFiles,
    jwks_path: Path,
    issuer: str,
    audience: str,
    trace_receiver: str = "",
    allowed_origins: str = r".*",
) -> Bootstrap:
    """Return the ingress bootstrap.

    Args:
        topology: the services to route to.
        listen: host:port of the ingress listener (plaintext HTTP/1.1 and h2).
        admin: host:port of Envoy's admin interface.
        service_endpoints: {service: sidecar inbound host:port of each replica};
            services missing here get no route.
        secrets: SDS files with the ingress certificate and the mesh CA.
        jwks_path: JWKS file with the keys that sign people's tokens.
        issuer: required ``iss`` claim.
        audience: required ``aud`` claim.
        trace_receiver: host:port of the OTLP/gRPC receiver; "" disables tracing.
        allowed_origins: regular expression of browser origins CORS accepts.
    """
    routes: list[Route] = []
    clusters = []
    for service in topology.services:
        if service.name not in service_endpoints:
            continue
        cluster = f"svc_{service.name}"
        routes.append(_health_route(service.name, cluster))
        routes.extend(service_routes(service, cluster, retries=True))
        identity = service_identity(service.name)
        clusters.append(
            common.static_cluster(
                cluster,
                list(service_endpoints[service.name]),
                tls=common.upstream_tls(secrets, identity, sni=dns_name(identity)),
                outlier_detection=common.outlier_detection(),
            )
        )
    if trace_receiver:
        clusters.append(common.trace_cluster(trace_receiver))

    cors = CorsPolicy(
        allow_origin_string_match=[
            StringMatcher(safe_regex=RegexMatcher(regex=allowed_origins))
        ],
        allow_methods="POST,GET,OPTIONS",
        allow_headers=ALLOW_HEADERS,
        expose_headers=EXPOSE_HEADERS,
        max_age="600",
    )
    manager = HttpConnectionManager(
        stat_prefix="ingress",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=RouteConfiguration(
            name="ingress",
            virtual_hosts=[
                VirtualHost(
                    name="hin",
                    domains=["*"],
                    routes=routes,
                    typed_per_filter_config={
                        "envoy.filters.http.cors": common.pack(cors)
                    },
                )
            ],
        ),
        http_filters=[
            HttpFilter(
                name="envoy.filters.http.cors", typed_config=common.pack(Cors())
            ),
            HttpFilter(
                name="envoy.filters.http.grpc_web", typed_config=common.pack(GrpcWeb())
            ),
            HttpFilter(
                name="envoy.filters.http.jwt_authn",
                typed_config=common.pack(
                    _jwt_authentication(jwks_path, issuer, audience)
                ),
            ),
            HttpFilter(
                name="envoy.filters.http.router", typed_config=common.pack(Router())
            ),
        ],
        tracing=common.tracing("ingress") if trace_receiver else None,
        access_log=common.access_log(),
        # Idle server streams are limited per route (none for Subscribe);
        # other streams get the default five minutes.
        stream_idle_timeout=datetime.timedelta(minutes=5),
    )
    listener = Listener(
        name="ingress",
        address=common.socket_address(listen),
        traffic_direction=TrafficDirection.INBOUND,
        filter_chains=[
            FilterChain(
                filters=[
                    Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=common.pack(manager),
                    )
                ]
            )
        ],
    )
    return common.bootstrap(
        node_id="ingress", admin=admin, listeners=[listener], clusters=clusters
    )


def _health_route(service: str, cluster: str) -> Route:
    return Route(
        name=f"{service}-health",
        match=RouteMatch(
            prefix=HEALTH_PREFIX,
            headers=[
                HeaderMatcher(
                    name=SERVICE_HEADER, string_match=StringMatcher(exact=service)
                )
            ],
        ),
        route=RouteAction(cluster=cluster, timeout=UNARY_TIMEOUT),
        tracing=untraced(),
    )


def _jwt_authentication(
    jwks_path: Path, issuer: str, audience: str
) -> JwtAuthentication:
    # Health checks and reflection carry no patient data and need no token;
    # every other path needs a valid token from the development issuer.
    open_prefixes = (HEALTH_PREFIX, *REFLECTION_PREFIXES)
    rules = [
        RequirementRule(match=RouteMatch(prefix=prefix)) for prefix in open_prefixes
    ]
    rules.append(
        RequirementRule(
            match=RouteMatch(prefix="/"),
            requires=JwtRequirement(provider_name=JWT_PROVIDER),
        )
    )
    return JwtAuthentication(
        providers={
            JWT_PROVIDER: JwtProvider(
                issuer=issuer,
                audiences=[audience],
                local_jwks=DataSource(filename=str(jwks_path)),
                # Services verify the token again, so it travels on.
                forward=True,
                require_expiration=True,
            )
        },
        rules=rules,
        bypass_cors_preflight=True,
    )
