"""svc_labs: laboratory orders, specimens and results, and the HL7 v2 MLLP listener."""
