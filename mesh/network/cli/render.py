"""``hin render k8s --out DIR``: Kubernetes manifests from the topology."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mesh.network.devkeys import ensure_dev_keys
from mesh.network.k8s import RenderSettings, render, write_manifests
from mesh.network.pki import CertificateAuthority
from mesh.network.topology import (
    Topology,
    TopologyError,
    default_topology,
    parse_replicas,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("render", help="write deployment manifests")
    targets = parser.add_subparsers(dest="render_target", metavar="TARGET")
    k8s = targets.add_parser(
        "k8s", help="Kubernetes manifests, one YAML file per service"
    )
    k8s.add_argument("--out", type=Path, required=True, help="folder to write into")
    k8s.add_argument("--namespace", default="hin", help="namespace (default hin)")
    k8s.add_argument("--image", default="hin:latest", help="image with the hin package")
    k8s.add_argument(
        "--kafka",
        default=RenderSettings.kafka_bootstrap,
        help="Kafka bootstrap servers seen from the cluster",
    )
    k8s.add_argument(
        "--otlp",
        default=RenderSettings.otlp_endpoint,
        help="OTLP/gRPC collector host:port seen from the cluster",
    )
    k8s.add_argument(
        "--database-url",
        default="",
        help="SQLAlchemy URL with {name} for the service, e.g. "
        "postgresql+psycopg://hin@db/{name}; default SQLite in the pod",
    )
    k8s.add_argument(
        "--replicas",
        action="append",
        default=[],
        metavar="SERVICE=N",
        help="replicas of a service, e.g. labs=3",
    )
    k8s.add_argument("--topology", type=Path, default=None, help="JSON topology file")
    k8s.add_argument(
        "--state", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    k8s.set_defaults(func=run_k8s)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_k8s(args: argparse.Namespace) -> int:
    try:
        topology = Topology.load(args.topology) if args.topology else default_topology()
        topology = topology.with_replicas(parse_replicas(args.replicas))
    except (TopologyError, OSError, json.JSONDecodeError) as exc:
        print(f"hin render: {exc}", file=sys.stderr)
        return 2
    state_dir = args.state.resolve()
    authority = CertificateAuthority.load_or_create(state_dir)
    _, jwks_path = ensure_dev_keys(state_dir)
    settings = RenderSettings(
        namespace=args.namespace,
        image=args.image,
        kafka_bootstrap=args.kafka,
        otlp_endpoint=args.otlp,
        database_url=args.database_url,
    )
    files = render(topology, authority, json.loads(jwks_path.read_text()), settings)
    for path in write_manifests(files, args.out):
        print(path)
    return 0
