"""HL7 v2 ER7 decoding, message reading and acknowledgments for the listener."""
