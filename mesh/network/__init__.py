"""What runs the network: broker, PKI, Envoy configuration, supervisor, CLI."""
