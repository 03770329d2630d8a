"""The process behind ``hin up``: starts, watches and stops the network.

Run as ``python -m mesh.network.supervisor --state DIR``; ``hin up`` starts
it detached. It starts, in order: the broker (unless KAFKA_BOOTSTRAP_SERVERS
is set), the trace receiver (unless OTEL_EXPORTER_OTLP_ENDPOINT is set), every
sidecar, every service (authz first), the ingress. It records everything in
``<state>/network.json`` and serves ``stop`` and ``restart`` requests on a
Unix socket. A service that exits is recorded as exited and left down until
``hin restart``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.network import envoy
from mesh.network.clients import OPERATOR_IDENTITY
from mesh.network.devkeys import ensure_dev_keys
from mesh.network.envoy.sidecar import INGRESS_IDENTITY
from mesh.network.pki import CertificateAuthority, dns_name, service_identity
from mesh.network.state import (
    EXITED,
    FAILED,
    READY,
    RUNNING,
    STOPPED,
    STOPPING,
    NetworkState,
    ReplicaState,
    ServiceState,
)
from mesh.network.topology import Topology, default_topology, parse_replicas
from mesh.network.tracestore import start_receiver
from mesh.runtime.logging import configure_logging
from mesh.runtime.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER

logger = logging.getLogger(__name__)

#: Time every replica gets to report SERVING through its sidecar.
READY_TIMEOUT_SECONDS = 120.0
#: Time a service gets to drain after SIGTERM before it is killed; the
#: service's own grace period (HIN_SHUTDOWN_GRACE_SECONDS) defaults to 10 s.
STOP_TIMEOUT_SECONDS = 15.0
ENVOY_STOP_TIMEOUT_SECONDS = 5.0
#: Interval between checks for leaves that need renewal.
RENEWAL_INTERVAL_SECONDS = 600.0
TOPOLOGY_FILE = "topology.json"
#: Lowest port the network listens on; lower ports are left to other programs.
FIRST_PORT = 10000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


class StartupError(RuntimeError):
    """A part of the network did not start; the message names it."""


class ManagedProcess:
    """One child process with its log file and an exit watcher."""

    def __init__(
        self, *, name: str, argv: list[str], env: dict[str, str], log: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self.expected_exit = False

    @property
    def pid(self) -> int:
        """Process id, or 0 before start."""
        return self.process.pid if self.process else 0

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start the process with output appended to its log file."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.expected_exit = False
        with self.log.open("ab") as output:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
        logger.info("started process", extra={"child": self.name, "pid": self.pid})

    async def stop(self, timeout: float) -> int | None:
        """Send SIGTERM, then SIGKILL after ``timeout`` seconds; return the code."""
        process = self.process
        if process is None or process.returncode is not None:
            return process.returncode if process else None
        self.expected_exit = True
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            logger.warning(
                "process did not stop; killing it", extra={"child": self.name}
            )
            process.kill()
            await process.wait()
        logger.info(
            "stopped process",
            extra={"child": self.name, "exit_code": process.returncode},
        )
        return process.returncode


class Supervisor:
    """Start the network in dependency order and stop it in reverse."""

    def __init__(
        self,
        *,
        state_dir: Path,
        topology: Topology,
        kafka_bootstrap: str = "",
        otlp_endpoint: str = "",
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.topology = topology
        self._external_kafka = kafka_bootstrap
        self._external_otlp = otlp_endpoint
        self.state = NetworkState(
            state_dir=str(self.state_dir), supervisor_pid=os.getpid()
        )
        self._broker: Any = None
        self._receiver: grpc.aio.Server | None = None
        self._sidecars: dict[tuple[str, int], ManagedProcess] = {}
        self._services: dict[tuple[str, int], ManagedProcess] = {}
        self._ingress: ManagedProcess | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._control: asyncio.AbstractServer | None = None
        self._authority: CertificateAuthority | None = None
        self._lock = asyncio.Lock()

    # Start -----------------------------------------------------------------

    async def start(self) -> None:
        """Start everything; raise StartupError naming the part that failed."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state.save()
        _, jwks = ensure_dev_keys(self.state_dir)
        self._authority = CertificateAuthority.load_or_create(self.state_dir)
        self.state.ca_path = str(self._authority.ca_path)
        await self._start_control()

        await self._start_broker()
        await self._start_trace_receiver()
        self._plan()
        self.state.save()

        await self._start_sidecars()
        for name in self._service_order():
            for index, _ in enumerate(self.state.services[name].replicas):
                await self._start_service(name, index)
        await self._wait_until_serving(list(self._services))

        await self._start_ingress(jwks)
        self._watchers.append(asyncio.create_task(self._renew_certificates()))
        self.state.status = READY
        self.state.save()
        logger.info("network ready", extra={"ingress": self.state.ingress})

    async def _start_broker(self) -> None:
        if self._external_kafka:
            self.state.kafka_bootstrap = self._external_kafka
            return
        from mesh.network.broker import EmbeddedBroker

        broker = EmbeddedBroker(log_path=self.state_dir / "logs" / "broker.log")
        await asyncio.to_thread(broker.start)
        self._broker = broker
        self.state.kafka_bootstrap = broker.bootstrap
        self.state.embedded_broker = True
        # Recorded so that `hin down` can still stop the broker when this
        # supervisor was killed; EmbeddedBroker keeps its process private.
        process = getattr(broker, "_process", None)
        self.state.broker_pid = process.pid if process is not None else 0

    async def _start_trace_receiver(self) -> None:
        if self._external_otlp:
            self.state.trace_receiver = _host_port(self._external_otlp)
            return
        self._receiver, port = await start_receiver(self.state_dir)
        self.state.trace_receiver = f"127.0.0.1:{port}"

    def _plan(self) -> None:
        """Choose every port and record the services that will run."""
        running = [s for s in self.topology.services if s.importable()]
        self.state.missing = [
            s.name for s in self.topology.services if not s.importable()
        ]
        self.topology = self.topology.only(s.name for s in running)
        with _free_ports() as port:
            self.state.ingress = f"127.0.0.1:{port()}"
            self.state.ingress_admin = f"127.0.0.1:{port()}"
            for service in self.topology.services:
                replicas = []
                for index in range(service.replicas):
                    replicas.append(
                        ReplicaState(
                            index=index,
                            address=f"127.0.0.1:{port()}",
                            sidecar_inbound=f"127.0.0.1:{port()}",
                            sidecar_admin=f"127.0.0.1:{port()}",
                            outbound={
                                target: f"127.0.0.1:{port()}"
                                for target in self.topology.upstreams(service.name)
                            },
                            mllp=f"127.0.0.1:{port()}" if service.mllp else "",
                            log=str(self._log_path(f"{service.name}-{index}")),
                            sidecar_log=str(
                                self._log_path(f"{service.name}-{index}-envoy")
                            ),
                        )
                    )
                self.state.services[service.name] = ServiceState(
                    module=service.module, replicas=replicas
                )

    def _service_order(self) -> list[str]:
        # Every other service calls authz's Check, so authz starts first.
        names = list(self.state.services)
        return sorted(names, key=lambda name: name != "authz")

    def _inbound_endpoints(self) -> dict[str, list[str]]:
        return {
            name: [replica.sidecar_inbound for replica in service.replicas]
            for name, service in self.state.services.items()
        }

    async def _start_sidecars(self) -> None:
        assert self._authority is not None
        endpoints = self._inbound_endpoints()
        for name, service in self.state.services.items():
            secrets = envoy.write_secret_files(
                self._authority,
                service_identity(name),
                self.state_dir / "envoy" / name,
            )
            for replica in service.replicas:
                config = envoy.build_sidecar(
                    topology=self.topology,
                    service=name,
                    address=replica.address,
                    inbound=replica.sidecar_inbound,
                    admin=replica.sidecar_admin,
                    outbound=replica.outbound,
                    upstream_endpoints=endpoints,
                    secrets=secrets,
                    trace_receiver=self.state.trace_receiver,
                    instance=str(replica.index),
                    sidecar_token=self._sidecar_token(),
                )
                path = envoy.write_bootstrap(
                    config,
                    self.state_dir / "envoy" / name / f"sidecar-{replica.index}.json",
                )
                process = self._envoy_process(
                    f"{name}-{replica.index}-envoy", path, Path(replica.sidecar_log)
                )
                self._sidecars[(name, replica.index)] = process
                await process.start()
                replica.sidecar_pid = process.pid
                self._watch(process, name, replica, sidecar=True)
        self.state.save()

    def _sidecar_token_path(self) -> Path:
        return self.state_dir / "keys" / "sidecar-token"

    def _sidecar_token(self) -> str:
        """Return the network's sidecar token, created on first use (mode 0600)."""
        path = self._sidecar_token_path()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def _envoy_process(self, name: str, config: Path, log: Path) -> ManagedProcess:
        return ManagedProcess(
            name=name,
            argv=[
                envoy.envoy_binary(),
                "-c",
                str(config),
                # Several Envoys share this machine; hot restart would need a
                # distinct --base-id per process and is not used.
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
            env=dict(os.environ),
            log=log,
        )

    def _service_environment(self, name: str, replica: ReplicaState) -> dict[str, str]:
        definition = self.topology.service(name)
        env = dict(os.environ)
        env.update(definition.environment)
        env.update(
            {
                "HIN_STATE_DIR": str(self.state_dir),
                "HIN_GRPC_ADDRESS": replica.address,
                "KAFKA_BOOTSTRAP_SERVERS": self.state.kafka_bootstrap,
                "HIN_JWKS_PATH": str(self.state_dir / "keys" / "jwks.json"),
                "HIN_INSTANCE_ID": str(replica.index),
                "OTEL_EXPORTER_OTLP_ENDPOINT": self._external_otlp
                or f"http://{self.state.trace_receiver}",
                # The service dials authz through its own sidecar, which adds
                # mTLS, retries and load balancing. Authz itself decides locally.
                "HIN_AUTHZ_ADDRESS": replica.outbound.get("authz", ""),
                "HIN_SIDECAR_TOKEN_FILE": str(self._sidecar_token_path()),
            }
        )
        if replica.mllp:
            env[f"HIN_{name.upper()}_MLLP_ADDRESS"] = replica.mllp
        return env

    async def _start_service(self, name: str, index: int) -> None:
        replica = self.state.services[name].replicas[index]
        process = ManagedProcess(
            name=f"{name}-{index}",
            argv=[sys.executable, "-m", self.topology.service(name).module],
            env=self._service_environment(name, replica),
            log=Path(replica.log),
        )
        self._services[(name, index)] = process
        await process.start()
        replica.pid = process.pid
        replica.state = RUNNING
        replica.exit_code = None
        self._watch(process, name, replica, sidecar=False)
        self.state.save()

    async def _start_ingress(self, jwks: Path) -> None:
        assert self._authority is not None
        secrets = envoy.write_secret_files(
            self._authority, INGRESS_IDENTITY, self.state_dir / "envoy" / "ingress"
        )
        config = envoy.build_ingress(
            topology=self.topology,
            listen=self.state.ingress,
            admin=self.state.ingress_admin,
            service_endpoints=self._inbound_endpoints(),
            secrets=secrets,
            jwks_path=jwks,
            issuer=os.environ.get("HIN_JWT_ISSUER", DEFAULT_ISSUER),
            audience=os.environ.get("HIN_JWT_AUDIENCE", DEFAULT_AUDIENCE),
            trace_receiver=self.state.trace_receiver,
        )
        path = envoy.write_bootstrap(config, self.state_dir / "envoy" / "ingress.json")
        self._ingress = self._envoy_process(
            "ingress-envoy", path, self._log_path("ingress-envoy")
        )
        await self._ingress.start()
        self.state.ingress_pid = self._ingress.pid
        self.state.save()
        await self._wait_for_ingress()

    def _watch(
        self,
        process: ManagedProcess,
        name: str,
        replica: ReplicaState,
        *,
        sidecar: bool,
    ) -> None:
        async def watch() -> None:
            assert process.process is not None
            code = await process.process.wait()
            if process.expected_exit:
                return
            logger.warning(
                "process exited", extra={"child": process.name, "exit_code": code}
            )
            if not sidecar:
                replica.state = EXITED
                replica.exit_code = code
            self.state.save()

        self._watchers.append(asyncio.create_task(watch()))

    async def _renew_certificates(self) -> None:
        """Renew expiring leaves; Envoy loads them without a restart."""
        assert self._authority is not None
        identities = [
            *(service_identity(name) for name in self.state.services),
            INGRESS_IDENTITY,
            OPERATOR_IDENTITY,
        ]
        while True:
            await asyncio.sleep(RENEWAL_INTERVAL_SECONDS)
            for identity in identities:
                try:
                    self._authority.ensure_leaf(identity)
                except (OSError, ValueError):
                    logger.exception(
                        "certificate renewal failed", extra={"identity": identity}
                    )

    def _log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    # Health ----------------------------------------------------------------

    async def _wait_until_serving(self, keys: list[tuple[str, int]]) -> None:
        """Wait until each replica reports SERVING through its sidecar."""
        assert self._authority is not None
        files = self._authority.ensure_leaf(OPERATOR_IDENTITY)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._authority.certificate_pem(),
            private_key=files.key.read_bytes(),
            certificate_chain=files.cert.read_bytes(),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_SECONDS
        for name, index in keys:
            replica = self.state.services[name].replicas[index]
            while True:
                process = self._services[(name, index)]
                if not process.alive:
                    raise StartupError(
                        f"service {name} replica {index} exited during start-up; "
                        f"see {replica.log}, which ends with:\n"
                        + _tail(Path(replica.log), lines=5)
                    )
                status = await check_health(
                    replica.sidecar_inbound, name, credentials, timeout=2.0
                )
                if status == "SERVING":
                    logger.info(
                        "replica serving",
                        extra={"service_name": name, "replica": index},
                    )
                    break
                if loop.time() > deadline:
                    raise StartupError(
                        f"service {name} replica {index} is not SERVING through its "
                        f"sidecar after {READY_TIMEOUT_SECONDS:.0f} s (last status "
                        f"{status}); see {replica.log} and {replica.sidecar_log}"
                    )
                await asyncio.sleep(0.3)

    async def _wait_for_ingress(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while loop.time() < deadline:
            assert self._ingress is not None
            if not self._ingress.alive:
                break
            try:
                reader, writer = await asyncio.open_connection(
                    *self.state.ingress_admin.rsplit(":", 1)
                )
                writer.write(
                    b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                answer = await reader.read()
                writer.close()
                if b" 200 " in answer.split(b"\r\n", 1)[0]:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise StartupError(
            "the ingress Envoy did not become ready; see "
            f"{self._log_path('ingress-envoy')}"
        )

    # Control ---------------------------------------------------------------

    async def _start_control(self) -> None:
        path = control_socket_path(self.state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self._control = await asyncio.start_unix_server(
            self._serve_control, path=str(path)
        )
        self.state.control_socket = str(path)

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = json.loads(await reader.readline() or b"{}")
            command = request.get("command")
            if command == "stop":
                self._stop.set()
                answer: dict[str, Any] = {"ok": True}
            elif command == "restart":
                answer = await self.restart(str(request.get("service", "")))
            else:
                answer = {"ok": False, "error": f"unknown command {command!r}"}
        except (json.JSONDecodeError, StartupError) as exc:
            answer = {"ok": False, "error": str(exc)}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
        writer.close()

    async def restart(self, name: str) -> dict[str, Any]:
        """Restart every replica of ``name`` (and a sidecar that died)."""
        if name not in self.state.services:
            return {
                "ok": False,
                "error": f"unknown service {name!r}; running services: "
                f"{sorted(self.state.services)}",
            }
        async with self._lock:
            keys = [(name, r.index) for r in self.state.services[name].replicas]
            for key in keys:
                sidecar = self._sidecars[key]
                if not sidecar.alive:
                    await sidecar.start()
                    replica = self.state.services[name].replicas[key[1]]
                    replica.sidecar_pid = sidecar.pid
                    self._watch(sidecar, name, replica, sidecar=True)
                await self._services[key].stop(STOP_TIMEOUT_SECONDS)
                await self._start_service(*key)
            await self._wait_until_serving(keys)
        return {"ok": True}

    async def run(self) -> None:
        """Start, wait for a stop request or signal, then stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self.start()
        except Exception as exc:
            logger.exception("network failed to start")
            self.state.status = FAILED
            self.state.error = str(exc)
            self.state.save()
            await self.stop(final_status=FAILED)
            return
        await self._stop.wait()
        await self.stop()

    # Stop ------------------------------------------------------------------

    async def stop(self, final_status: str = STOPPED) -> None:
        """Stop in reverse order: ingress, services, sidecars, receiver, broker."""
        if self.state.status != FAILED:
            self.state.status = STOPPING
        self.state.save()
        if self._ingress is not None:
            await self._ingress.stop(ENVOY_STOP_TIMEOUT_SECONDS)

        order = self._service_order()
        services = sorted(
            self._services.items(), key=lambda item: order.index(item[0][0])
        )
        await asyncio.gather(
            *(process.stop(STOP_TIMEOUT_SECONDS) for _, process in reversed(services))
        )
        for (name, index), _ in services:
            self.state.services[name].replicas[index].state = EXITED
        await asyncio.gather(
            *(p.stop(ENVOY_STOP_TIMEOUT_SECONDS) for p in self._sidecars.values())
        )

        if self._receiver is not None:
            await self._receiver.stop(2.0)
        if self._broker is not None:
            await asyncio.to_thread(self._broker.stop)
        for watcher in self._watchers:
            watcher.cancel()
        if self._control is not None:
            self._control.close()
            Path(self.state.control_socket).unlink(missing_ok=True)  # noqa: ASYNC240
        self.state.status = final_status
        self.state.save()
        logger.info("network stopped")


async def check_health(
    address: str, service: str, credentials: grpc.ChannelCredentials, *, timeout: float
) -> str:
    """Return the health status of ``service`` through the sidecar at ``address``.

    Returns the status name (SERVING, NOT_SERVING, ...) or UNREACHABLE.
    """
    options = (("grpc.ssl_target_name_override", dns_name(service_identity(service))),)
    async with grpc.aio.secure_channel(address, credentials, options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def control_socket_path(state_dir: Path) -> Path:
    """Return the supervisor's Unix socket path for ``state_dir``.

    A Unix socket path is limited to 107 bytes on Linux, so a deep state
    folder gets its socket in the temporary folder, named by a hash.
    """
    path = state_dir.resolve() / "run" / "control.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"hin-{digest}.sock"


@contextlib.contextmanager
def _free_ports() -> Iterator[Any]:
    """Yield a function returning distinct free loopback ports.

    Ports come from below the kernel's ephemeral range, because the kernel
    hands ephemeral ports to every outgoing connection and every bind to
    port 0, and one of those could take a port between this choice and the
    child's bind. Every socket stays bound until the block ends, so no port
    is handed out twice.
    """
    sockets: list[socket.socket] = []
    ephemeral_low, ephemeral_high = _ephemeral_range()

    def allocate() -> int:
        for _ in range(500):
            port = random.randrange(FIRST_PORT, 65536)
            if ephemeral_low <= port <= ephemeral_high:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
            return port
        raise StartupError(
            f"no free loopback port from {FIRST_PORT} outside the ephemeral range "
            f"{ephemeral_low}-{ephemeral_high}"
        )

    try:
        yield allocate
    finally:
        for sock in sockets:
            sock.close()


def _ephemeral_range() -> tuple[int, int]:
    """Return the kernel's ephemeral port range (Linux's default if unknown)."""
    try:
        low, high = EPHEMERAL_RANGE_FILE.read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _tail(path: Path, *, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _host_port(endpoint: str) -> str:
    return endpoint.split("://", 1)[-1].rstrip("/")


def send_control(
    state_dir: Path, request: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Send one request to the running supervisor and return its response."""
    state = NetworkState.load(state_dir)
    path = state.control_socket or str(control_socket_path(state_dir))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(path)
        client.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data or b"{}")
    return answer


def main(argv: list[str] | None = None) -> None:
    """Run the supervisor until ``hin down`` or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m mesh.network.supervisor")
    parser.add_argument("--state", type=Path, default=Path(".hin"))
    parser.add_argument("--topology", type=Path, default=None)
    parser.add_argument("--replicas", action="append", default=[])
    args = parser.parse_args(argv)
    configure_logging(
        service="supervisor", level=os.environ.get("HIN_LOG_LEVEL", "INFO")
    )
    topology = Topology.load(args.topology) if args.topology else default_topology()
    topology = topology.with_replicas(parse_replicas(args.replicas))
    state_dir = args.state.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / TOPOLOGY_FILE).write_text(json.dumps(topology.to_dict(), indent=2))
    supervisor = Supervisor(
        state_dir=state_dir,
        topology=topology,
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""),
        otlp_endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
    )
    asyncio.run(supervisor.run())


if __name__ == "__main__":
    main()
