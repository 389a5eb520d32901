"""flashcore.tf: the native backend (filled in by its own issue). Importing it imports tf."""
