"""``hin demo``: run the network on the sample data and walk a hospital day."""
