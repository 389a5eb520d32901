"""flashcore.conformance: golden reference files and the backend conformance suite."""
