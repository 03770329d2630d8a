"""Rules of the records context, free of gRPC and SQL."""
