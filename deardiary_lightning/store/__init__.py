"""The local store's on-disk format: layout, append-only logs and the state rebuilt from them.

:class:`~deardiary_lightning.backends.local.LocalBackend` applies DearDiary's rules on top of
these pieces; the README's "The local store" section describes the format for people who read a
store with ordinary tools.
"""

from deardiary_lightning.store.layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    StoreFormatError,
    StoreLocation,
    open_location,
)
from deardiary_lightning.store.log import LogReader, LogWriter, Record
from deardiary_lightning.store.state import State

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LogReader",
    "LogWriter",
    "Record",
    "State",
    "StoreFormatError",
    "StoreLocation",
    "open_location",
]
