"""What runs inside every service process: server, storage, events, identity."""
