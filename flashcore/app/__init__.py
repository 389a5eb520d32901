"""flashcore's application storey: the command-line tools built on the spec and the backends."""
