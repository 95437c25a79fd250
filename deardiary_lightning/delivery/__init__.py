"""The delivery pipeline: a run writer whose logging calls never block and never lose data.

:func:`open_run` opens a :class:`RunWriter` on a DearDiary server or a local store. Logging
calls return in microseconds; background threads deliver each value exactly once, retry through
errors, keep data in a local spool through outages and upload it when the server is back.
"""

from deardiary_lightning.delivery.retry import RetryPolicy
from deardiary_lightning.delivery.values import (
    EMPTY_PLACEHOLDER,
    MAX_PARAMETER_CHARS,
    DearDiaryValueWarning,
)
from deardiary_lightning.delivery.writer import RunWriter, SpooledError, open_run

__all__ = [
    "EMPTY_PLACEHOLDER",
    "MAX_PARAMETER_CHARS",
    "DearDiaryValueWarning",
    "RetryPolicy",
    "RunWriter",
    "SpooledError",
    "open_run",
]
