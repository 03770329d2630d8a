"""svc_billing: price list, charges, invoices, coverage, claims and payments."""
