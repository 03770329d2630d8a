"""Database access for a service: engine, transactions and migrations."""

from mesh.runtime.storage.database import Database, StoreError

__all__ = ["Database", "StoreError"]
