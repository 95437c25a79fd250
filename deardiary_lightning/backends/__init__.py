"""Backends behind the client: the DearDiary HTTP API (``http``) and the local store (``local``).

Both implement :class:`~deardiary_lightning.backends.base.Backend` and pass the same contract
tests.
"""

from deardiary_lightning.backends.base import Backend

__all__ = ["Backend"]
