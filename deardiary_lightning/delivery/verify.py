"""Exactly-once delivery: finding out what an ambiguous request left on the server.

DearDiary's writes are not idempotent: metrics and parameters have no uniqueness, so a create
sent twice stores two rows, and the metric batch route is not atomic, so a batch that failed may
have stored some of its rows. A request whose answer was lost (the connection dropped after it
was sent, the read timed out) or that got a 5xx may therefore have landed fully, in part, or not
at all. The writer never resends such a request blindly. It first reads what landed, with the
methods below, and resends only the rest.

**Metrics: every batch carries a fingerprint.** The writer sends every batch with an explicit
``step`` and an explicit ``recorded_at`` (the time of the logging call, at the millisecond
precision the server keeps), and it never sends two batches with the same ``(step,
recorded_at)``: when two batches of the same step would share a millisecond, the later one is
moved on by a millisecond. The keys of one batch are distinct. A row of the iteration therefore
belongs to a given batch exactly when it has the batch's step, the batch's ``recorded_at`` and
one of its keys.

To check a batch the writer reads the rows of its step. Metric pages are ordered by step (then
creation), so the rows of one step are contiguous: one ``limit=0`` page gives the ``total``;
the last page (``offset = total - 200``) holds the step when it is recent, which is the usual
case; otherwise a binary search on the offset, reading one row per probe, finds the first row
of the step in ``O(log total)`` small requests, and the step's rows are read from there. The
keys found with the batch's fingerprint landed; the others are resent in a batch with the same
fingerprint, so a second ambiguous failure is checked the same way.

The check runs while no other request of the writer is in flight (the writer holds back new
requests until the in-flight ones have answered), so the list does not move under the search.
It assumes this writer is the only one adding rows to the iteration while it runs (another
process writing the same step with the same millisecond is the only way to fool it).

**Parameters** are upserts by key. After an ambiguous create the writer lists the iteration's
parameters: a row with the key and the sent value means it landed (its id is kept for later
updates); no such row means it did not. Updates (``PATCH``) are idempotent and simply resent.

**Tags**: attaching a tag twice is refused with 409, so the first answer that says "created" or
"already attached" ends the matter; the iteration's tags are listed after an ambiguous failure.

**Resources**: before an upload the writer lists the experiment's resources with the same name,
size and SHA-256. After an ambiguous failure it lists them again: a new match is the upload
that landed.

**Ending the iteration** is a ``PATCH``; if a resent one is refused because the iteration has
already ended, the iteration is read to confirm that it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from deardiary_lightning.client import Client
from deardiary_lightning.entities import Id, Metric, Pagination, Parameter

__all__ = [
    "PAGE",
    "find_parameter",
    "landed_keys",
    "rows_at_step",
    "rows_from_step",
]

logger = logging.getLogger(__name__)

#: Largest page the server serves.
PAGE = 200


def _first_offset_at_or_after(client: Client, iteration_id: Id, step: int, hi: int) -> int:
    """Binary search for the first offset in ``[0, hi]`` whose row has ``step >= step``.

    The row at ``hi`` must have a step at or after ``step`` (or ``hi`` is the list's end).
    """
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        page = client.get_metrics(iteration_id, Pagination(1, mid))
        if not page.data:
            hi = mid
            continue
        if page.data[0].step < step:
            lo = mid + 1
        else:
            hi = mid
    return lo


def rows_from_step(
    client: Client, iteration_id: Id, step: int, *, only: bool = False
) -> list[Metric]:
    """Return the iteration's metric rows whose step is ``step`` or later (or only ``step``).

    Args:
        client: Where to read.
        iteration_id: The iteration.
        step: The first step of interest.
        only: Stop at the first row past ``step``.

    Returns:
        The rows, in the server's order (step, then creation).
    """
    total = client.get_metrics(iteration_id, Pagination(0, 0)).total
    if total == 0:
        return []

    tail_offset = max(0, total - PAGE)
    tail = client.get_metrics(iteration_id, Pagination(PAGE, tail_offset)).data
    if not tail:
        return []
    if tail[-1].step < step:
        return []
    if tail_offset == 0 or tail[0].step < step:
        return [row for row in tail if row.step == step or (not only and row.step > step)]

    start = _first_offset_at_or_after(client, iteration_id, step, tail_offset)
    rows: list[Metric] = []
    offset = start
    while True:
        page = client.get_metrics(iteration_id, Pagination(PAGE, offset))
        for row in page.data:
            if row.step < step:
                continue
            if only and row.step > step:
                return rows
            rows.append(row)
        offset += len(page.data)
        if not page.data or offset >= page.total:
            return rows


def rows_at_step(client: Client, iteration_id: Id, step: int) -> list[Metric]:
    """Return the iteration's metric rows of one step."""
    return rows_from_step(client, iteration_id, step, only=True)


def landed_keys(
    rows: Sequence[Metric], step: int, recorded_at: datetime, keys: Sequence[str]
) -> dict[str, int]:
    """Count, per key of a batch, the rows that carry the batch's fingerprint.

    Args:
        rows: Rows read from the server (any steps).
        step: The batch's step.
        recorded_at: The batch's ``recorded_at`` as sent (naive, millisecond precision).
        keys: The batch's keys.

    Returns:
        Key to number of matching rows (a key absent from the result did not land).
    """
    wanted = set(keys)
    found: dict[str, int] = {}
    for row in rows:
        if row.step == step and row.key in wanted and row.recorded_at == recorded_at:
            found[row.key] = found.get(row.key, 0) + 1
    return found


def find_parameter(
    rows: Sequence[Parameter], key: str, text: str, known: set[Id] | None = None
) -> Parameter | None:
    """Return the parameter row holding ``key`` = ``text`` that is not already known.

    Args:
        rows: The iteration's parameters.
        key: The key sent.
        text: The value sent.
        known: Ids of rows the writer already knows about (they are not the one sent).

    Returns:
        The matching row, or ``None``.
    """
    for row in rows:
        if row.key == key and row.value == text and (known is None or row.id not in known):
            return row
    return None
