"""Textual CSS, loaded through importlib.resources."""
