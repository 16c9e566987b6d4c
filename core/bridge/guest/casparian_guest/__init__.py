"""Casparian Flow guest shim, split by concern; entry point: ../__main__.py."""
