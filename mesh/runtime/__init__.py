"""Code inside every service process: server, storage, events, identity."""
