"""The engine: no Textual import, ever."""
