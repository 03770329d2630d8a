"""Rules of the authz context: access policy and the audit hash chain."""
