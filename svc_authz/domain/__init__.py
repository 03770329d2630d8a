"""Rules of the authz context: who may reach which patient's data."""
