"""Thin command-line entry points. Nothing in the package imports this."""
