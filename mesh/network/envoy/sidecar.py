"""Envoy configuration of one service replica's sidecar.

Inbound: one mTLS listener that accepts only certificates of the mesh CA,
authorizes the caller's SPIFFE id per method prefix (RBAC), sets
``x-forwarded-client-cert`` and forwards plaintext HTTP/2 to the service on
loopback. Outbound: one plaintext loopback listener per upstream service,
originating mTLS to that service's sidecars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap
from envoy_data_plane.envoy.config.cluster.v3 import Cluster
from envoy_data_plane.envoy.config.core.v3 import (
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    TrafficDirection,
    TransportSocket,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.rbac.v3 import (
    Permission,
    PermissionSet,
    Policy,
    Principal,
    PrincipalAuthenticated,
    RbacAction,
)
from envoy_data_plane.envoy.config.rbac.v3 import Rbac as RbacRules
from envoy_data_plane.envoy.config.route.v3 import (
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import Rbac
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: E501
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpConnectionManagerForwardClientCertDetails,
    HttpConnectionManagerSetCurrentClientCertDetails,
    HttpFilter,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    DownstreamTlsContext,
)
from envoy_data_plane.envoy.type.matcher.v3 import PathMatcher, StringMatcher

from mesh.network.envoy import common
from mesh.network.envoy.routes import UNARY_TIMEOUT, service_routes, untraced
from mesh.network.pki import dns_name, service_identity, spiffe_id
from mesh.network.topology import (
    HEALTH_PREFIX,
    REFLECTION_PREFIXES,
    ServiceDef,
    Topology,
)
from mesh.runtime.identity import SIDECAR_TOKEN_HEADER

LOCAL_CLUSTER = "local_service"
#: Mesh identity of the ingress Envoy, which may call every public method.
INGRESS_IDENTITY = "ingress"


def build_sidecar(
    *,
    topology: Topology,
    service: str,
    address: str,
    inbound: str,
    admin: str,
    outbound: Mapping[str, str],
    upstream_endpoints: Mapping[str, Sequence[str]],
    secrets: common.SecretFiles,
    trace_receiver: str = "",
    instance: str = "0",
    sidecar_token: str = "",
) -> Bootstrap:
    """Return the bootstrap of ``service``'s sidecar.

    Args:
        topology: the mesh description with the call policy.
        service: name of the service this sidecar fronts.
        address: host:port of the service's own plaintext gRPC server.
        inbound: host:port of the mTLS inbound listener.
        admin: host:port of Envoy's admin interface.
        outbound: {upstream service: host:port of its local listener}.
        upstream_endpoints: {upstream service: inbound host:port of each replica}.
        secrets: SDS files with this service's certificate and the mesh CA.
        trace_receiver: host:port of the OTLP/gRPC receiver; "" disables tracing.
        instance: replica index, part of the node id.
        sidecar_token: secret added to every request passed to the service, so
            that it trusts the client certificate header from this sidecar
            only; "" adds nothing.
    """
    definition = topology.service(service)
    listeners = [
        _inbound_listener(
            topology, definition, inbound, secrets, trace_receiver, sidecar_token
        )
    ]
    clusters: list[Cluster] = [common.static_cluster(LOCAL_CLUSTER, [address])]
    for target in topology.upstreams(service):
        if target not in outbound:
            continue
        listeners.append(
            _outbound_listener(
                topology.service(target),
                outbound[target],
                f"{service}-sidecar" if trace_receiver else "",
            )
        )
        identity = service_identity(target)
        clusters.append(
            common.static_cluster(
                f"out_{target}",
                list(upstream_endpoints[target]),
                tls=common.upstream_tls(secrets, identity, sni=dns_name(identity)),
                outlier_detection=common.outlier_detection(),
            )
        )
    if trace_receiver:
        clusters.append(common.trace_cluster(trace_receiver))
    return common.bootstrap(
        node_id=f"{service}-{instance}-sidecar",
        admin=admin,
        listeners=listeners,
        clusters=clusters,
    )


def rbac_policies(topology: Topology, service: ServiceDef) -> dict[str, Policy]:
    """Return the RBAC policies of ``service``'s inbound listener.

    The TLS handshake already rejects certificates from another CA, so health
    checks are open to every mesh identity. Methods are open only to the
    callers the topology names and to the ingress, which checked the JWT.
    """
    policies = {
        "health": Policy(
            permissions=[_path_prefixes([HEALTH_PREFIX])],
            principals=[Principal(any=True)],
        ),
        "ingress": Policy(
            permissions=[
                _path_prefixes([*service.path_prefixes(), *REFLECTION_PREFIXES])
            ],
            principals=[_spiffe_principal(INGRESS_IDENTITY)],
        ),
    }
    for caller, prefixes in sorted(topology.callers(service.name).items()):
        policies[f"svc-{caller}"] = Policy(
            permissions=[_path_prefixes(prefixes)],
            principals=[_spiffe_principal(service_identity(caller))],
        )
    return policies


def _inbound_listener(
    topology: Topology,
    service: ServiceDef,
    inbound: str,
    secrets: common.SecretFiles,
    trace_receiver: str,
    sidecar_token: str = "",
) -> Listener:
    routes = service_routes(service, LOCAL_CLUSTER, retries=False)
    routes.append(
        Route(
            name="health",
            match=RouteMatch(prefix=HEALTH_PREFIX),
            route=RouteAction(cluster=LOCAL_CLUSTER, timeout=UNARY_TIMEOUT),
            tracing=untraced(),
        )
    )
    routes.extend(
        Route(
            name=f"reflection-{index}",
            match=RouteMatch(prefix=prefix),
            route=RouteAction(cluster=LOCAL_CLUSTER, timeout=UNARY_TIMEOUT),
        )
        for index, prefix in enumerate(REFLECTION_PREFIXES)
    )
    manager = HttpConnectionManager(
        stat_prefix="inbound",
        codec_type=HttpConnectionManagerCodecType.HTTP2,
        route_config=RouteConfiguration(
            name="inbound",
            virtual_hosts=[VirtualHost(name="inbound", domains=["*"], routes=routes)],
            # Overwrite, never append: a value a client sent must not survive.
            request_headers_to_add=[
                HeaderValueOption(
                    header=HeaderValue(key=SIDECAR_TOKEN_HEADER, value=sidecar_token),
                    append_action=(
                        HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
                    ),
                )
            ]
            if sidecar_token
            else [],
        ),
        http_filters=[
            HttpFilter(
                name="envoy.filters.http.rbac",
                typed_config=common.pack(
                    Rbac(
                        rules=RbacRules(
                            action=RbacAction.ALLOW,
                            policies=rbac_policies(topology, service),
                        )
                    )
                ),
            ),
            _router(),
        ],
        # The service trusts this header to learn the calling service, so the
        # sidecar replaces whatever a client sent with the verified peer's URI.
        forward_client_cert_details=(
            HttpConnectionManagerForwardClientCertDetails.SANITIZE_SET
        ),
        set_current_client_cert_details=HttpConnectionManagerSetCurrentClientCertDetails(
            uri=True
        ),
        tracing=common.tracing(f"{service.name}-sidecar") if trace_receiver else None,
        access_log=common.access_log(),
    )
    tls = DownstreamTlsContext(
        common_tls_context=common.common_tls_context(secrets),
        require_client_certificate=True,
    )
    return Listener(
        name="inbound",
        address=common.socket_address(inbound),
        traffic_direction=TrafficDirection.INBOUND,
        filter_chains=[
            FilterChain(
                filters=[_manager_filter(manager)],
                transport_socket=TransportSocket(
                    name="envoy.transport_sockets.tls", typed_config=common.pack(tls)
                ),
            )
        ],
    )


def _outbound_listener(target: ServiceDef, listen: str, trace_name: str) -> Listener:
    manager = HttpConnectionManager(
        stat_prefix=f"outbound_{target.name}",
        codec_type=HttpConnectionManagerCodecType.HTTP2,
        route_config=RouteConfiguration(
            name=f"outbound_{target.name}",
            virtual_hosts=[
                VirtualHost(
                    name=target.name,
                    domains=["*"],
                    routes=service_routes(target, f"out_{target.name}", retries=True),
                )
            ],
        ),
        http_filters=[_router()],
        tracing=common.tracing(trace_name) if trace_name else None,
        access_log=common.access_log(),
    )
    return Listener(
        name=f"outbound_{target.name}",
        address=common.socket_address(listen),
        traffic_direction=TrafficDirection.OUTBOUND,
        filter_chains=[FilterChain(filters=[_manager_filter(manager)])],
    )


def _path_prefixes(prefixes: Sequence[str]) -> Permission:
    return Permission(
        or_rules=PermissionSet(
            rules=[
                Permission(url_path=PathMatcher(path=StringMatcher(prefix=prefix)))
                for prefix in prefixes
            ]
        )
    )


def _spiffe_principal(identity: str) -> Principal:
    return Principal(
        authenticated=PrincipalAuthenticated(
            principal_name=StringMatcher(exact=spiffe_id(identity))
        )
    )


def _router() -> HttpFilter:
    return HttpFilter(
        name="envoy.filters.http.router", typed_config=common.pack(Router())
    )


def _manager_filter(manager: HttpConnectionManager) -> Filter:
    return Filter(
        name="envoy.filters.network.http_connection_manager",
        typed_config=common.pack(manager),
    )
