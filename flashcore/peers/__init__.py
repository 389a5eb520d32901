"""Importers for checkpoints of other FLASH implementations."""
