"""flashcore's application storey: the command-line tools built on the spec and the backends (run
folders and checkpoints, progress bars, quiet start-up, export)."""
