"""The application storey: run folders and checkpoints, progress bars, quiet start-up (imports the
spec, never a backend directly)."""
