"""The versioned resource store: the only package that talks SQL."""

from .resources import Moved, Store, Stored, Tx

__all__ = ["Moved", "Store", "Stored", "Tx"]
