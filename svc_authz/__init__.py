"""svc_authz: access decisions, consent, break-the-glass and the audit trail."""
