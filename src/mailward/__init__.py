"""Mailward: a mail security milter for an organisation's entry and exit points."""

__version__ = "0.1.0"
