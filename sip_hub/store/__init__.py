"""The versioned resource store: the only package that talks SQL."""

from .resources import Store, Stored, Tx

__all__ = ["Store", "Stored", "Tx"]
