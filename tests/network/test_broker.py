"""Embedded broker: start, readiness, restart on the same port, stop."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from mesh.network.broker import BrokerError, EmbeddedBroker, bootstrap_from_environment


def topics(bootstrap: str) -> set[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return set(admin.list_topics(timeout=10).topics)


def create_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, 2, 1)]).values():
        future.result(10)


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_started_broker_answers_metadata() -> None:
    with EmbeddedBroker() as broker:
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        metadata = admin.list_topics(timeout=10)
        assert len(metadata.brokers) == 1
        [advertised] = metadata.brokers.values()
        assert advertised.host == "127.0.0.1"
        assert advertised.port == broker.port


def test_restart_keeps_port_loses_topics() -> None:
    with EmbeddedBroker() as broker:
        port = broker.port
        create_topic(broker.bootstrap, "broker-test")
        assert "broker-test" in topics(broker.bootstrap)
        broker.restart()
        assert broker.port == port
        assert broker.running
        assert "broker-test" not in topics(broker.bootstrap)


def test_stop_closes_port() -> None:
    broker = EmbeddedBroker().start()
    port = broker.port
    broker.stop()
    assert not broker.running
    assert not port_accepts(port)


def test_given_port_is_used() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with EmbeddedBroker(port) as broker:
        assert broker.bootstrap == f"127.0.0.1:{port}"
        assert port_accepts(port)


def test_taken_port_raises_broker_error() -> None:
    with EmbeddedBroker() as first:
        with pytest.raises(BrokerError, match=str(first.port)):
            EmbeddedBroker(first.port).start()
        # The running broker is untouched by the failed start.
        assert first.running
        assert (
            len(
                AdminClient({"bootstrap.servers": first.bootstrap})
                .list_topics(timeout=10)
                .brokers
            )
            == 1
        )


def test_bootstrap_before_start_raises() -> None:
    with pytest.raises(BrokerError, match="start"):
        _ = EmbeddedBroker().bootstrap


def test_log_file_receives_output(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "broker.log"
    with EmbeddedBroker(log_path=log):
        pass
    assert log.exists()


def test_bootstrap_prefers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "network.json").write_text(
        json.dumps({"kafka_bootstrap": "127.0.0.1:2"})
    )
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert bootstrap_from_environment(tmp_path) == "127.0.0.1:1"


def test_bootstrap_from_network_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "network.json").write_text(
        json.dumps({"kafka_bootstrap": "127.0.0.1:2"})
    )
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert bootstrap_from_environment(tmp_path) == "127.0.0.1:2"


def test_bootstrap_missing_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(BrokerError, match="KAFKA_BOOTSTRAP_SERVERS"):
        bootstrap_from_environment(tmp_path)


def test_stopped_broker_rejects_clients() -> None:
    broker = EmbeddedBroker().start()
    bootstrap = broker.bootstrap
    broker.stop()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=1)
