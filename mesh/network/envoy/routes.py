"""Routes of one service: streaming, idempotent (retried) and other methods."""

from __future__ import annotations

import datetime

from envoy_data_plane.envoy.config.route.v3 import (
    RetryPolicy,
    Route,
    RouteAction,
    RouteActionMaxStreamDuration,
    RouteMatch,
    Tracing,
)
from envoy_data_plane.envoy.type.matcher.v3 import RegexMatcher
from envoy_data_plane.envoy.type.v3 import FractionalPercent

from mesh.network.topology import ServiceDef

#: Deadline of a unary call at the first Envoy it crosses; a client's shorter
#: grpc-timeout still wins because Envoy honours it up to this value.
UNARY_TIMEOUT = datetime.timedelta(seconds=30)
#: A zero duration disables the timer: streams such as Subscribe stay open
#: while idle for as long as the client keeps them.
DISABLED = datetime.timedelta(0)
#: gRPC conditions worth one more try on another replica for a read.
RETRY_ON = "unavailable,cancelled,resource-exhausted,reset,connect-failure"


def service_routes(
    service: ServiceDef,
    cluster: str,
    *,
    retries: bool,
    timeout: datetime.timedelta = UNARY_TIMEOUT,
) -> list[Route]:
    """Return the routes of ``service``'s methods to ``cluster``.

    Order matters: Envoy takes the first match, so streaming methods come
    first (no route or idle timeout), then idempotent methods (retried when
    ``retries``), then every other method under the service's prefixes.
    """
    routes = [
        Route(
            name=f"{service.name}-stream{index}",
            match=RouteMatch(path=path),
            route=RouteAction(cluster=cluster, timeout=DISABLED, idle_timeout=DISABLED),
        )
        for index, path in enumerate(service.streaming_paths())
    ]
    if retries:
        routes.append(
            Route(
                name=f"{service.name}-idempotent",
                match=RouteMatch(
                    safe_regex=RegexMatcher(regex=service.idempotent_path_regex())
                ),
                route=RouteAction(
                    cluster=cluster,
                    timeout=timeout,
                    max_stream_duration=_grpc_timeout_cap(timeout),
                    retry_policy=RetryPolicy(
                        retry_on=RETRY_ON,
                        num_retries=2,
                        per_try_timeout=timeout / 3,
                    ),
                ),
            )
        )
    routes.extend(
        Route(
            name=f"{service.name}-{index}",
            match=RouteMatch(prefix=prefix),
            route=RouteAction(
                cluster=cluster,
                timeout=timeout,
                max_stream_duration=_grpc_timeout_cap(timeout),
            ),
        )
        for index, prefix in enumerate(service.path_prefixes())
    )
    return routes


def _grpc_timeout_cap(timeout: datetime.timedelta) -> RouteActionMaxStreamDuration:
    # Honour the client's grpc-timeout header, but never beyond ``timeout``.
    return RouteActionMaxStreamDuration(grpc_timeout_header_max=timeout)


def untraced() -> Tracing:
    """Return route tracing that samples nothing.

    Health checks run every few seconds and would bury real traces in
    ``hin traces list``.
    """
    return Tracing(
        client_sampling=FractionalPercent(numerator=0),
        random_sampling=FractionalPercent(numerator=0),
        overall_sampling=FractionalPercent(numerator=0),
    )
