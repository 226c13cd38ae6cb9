"""Attacks of an honest-but-curious server, as plug-ins (``registry``)."""
