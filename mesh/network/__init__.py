"""Network operation: broker, PKI, Envoy configuration, supervisor, CLI."""
