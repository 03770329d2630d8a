"""Patient records and the master patient index (RecordsService)."""
