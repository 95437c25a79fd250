"""The store's contents in memory, rebuilt by applying log records.

Records are facts, already checked by the writer: "this row was created", "these fields were
set", "this row was deleted", "these metric points were logged". Applying them never fails and
never re-checks a rule, so every process that reads the same records ends with the same rows.

Every record carries a stamp ``(t, writer, n)``: the writer's clock in nanoseconds, its id and
its record counter. Stamps order rows by creation (lists, metric ties) and settle concurrent
updates of one field: the update with the larger stamp wins, whatever order the records are read
in. An update or delete can arrive before the row it targets (another writer's records read in
a later poll); it waits until the row appears.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any

from deardiary_lightning.store.log import Record

__all__ = ["KINDS", "PARENT_FIELD", "MetricRow", "Stamp", "State"]

#: ``(t_ns, writer_id, record_number)``.
Stamp = tuple[int, str, int]

#: ``[id, iteration_id, key, value, step, recorded_at, stamp, index_in_record]``.
MetricRow = list[Any]

#: Kinds of row kept in :attr:`State.rows` and the field naming each row's parent.
PARENT_FIELD: dict[str, str | None] = {
    "project": None,
    "experiment": "project_id",
    "iteration": "experiment_id",
    "parameter": "iteration_id",
    "resource": "experiment_id",
    "model": "project_id",
    "model_version": "model_id",
}

KINDS = tuple(PARENT_FIELD)

_M_ID, _M_ITERATION, _M_KEY, _M_VALUE, _M_STEP, _M_AT, _M_STAMP, _M_INDEX = range(8)


class State:
    """Rows of every kind, indexes for the backend's queries, and the apply logic."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
        self.created: dict[str, Stamp] = {}
        self.children: dict[tuple[str, str], dict[str, None]] = {}
        self.deleted: set[str] = set()
        self._field_stamps: dict[str, dict[str, Stamp]] = {}
        self._waiting: dict[str, list[tuple[Stamp, Record]]] = {}
        self.metrics: dict[str, MetricRow] = {}
        self.metrics_of: dict[str, dict[str, None]] = {}
        self.max_step: dict[tuple[str, str], int] = {}
        self._sorted: dict[str, list[MetricRow]] = {}
        self.tags: dict[str, dict[str, Any]] = {}
        self.tag_by_value: dict[str, str] = {}
        self.tag_links: dict[tuple[str, str], dict[str, str]] = {}

    # -- queries ------------------------------------------------------------------------------

    def row(self, kind: str, row_id: object) -> dict[str, Any] | None:
        """Return a row by id, or ``None``."""
        if not isinstance(row_id, str):
            return None
        return self.rows[kind].get(row_id)

    def rows_under(self, kind: str, parent_id: object) -> list[dict[str, Any]]:
        """Return the rows of ``kind`` whose parent is ``parent_id``, in creation order."""
        if not isinstance(parent_id, str):
            return []
        ids = self.children.get((kind, parent_id))
        if not ids:
            return []
        table = self.rows[kind]
        ordered = sorted(ids, key=self.created.__getitem__)
        return [table[row_id] for row_id in ordered]

    def sorted_metrics(self, iteration_id: object) -> list[MetricRow]:
        """Return the points of an iteration by step, then creation (cached until a change)."""
        if not isinstance(iteration_id, str):
            return []
        cached = self._sorted.get(iteration_id)
        if cached is not None:
            return cached
        ids = self.metrics_of.get(iteration_id, {})
        rows = [self.metrics[metric_id] for metric_id in ids]
        rows.sort(key=lambda r: (r[_M_STEP], r[_M_STAMP], r[_M_INDEX]))
        self._sorted[iteration_id] = rows
        return rows

    def metrics_in_creation_order(self, iteration_id: str) -> list[MetricRow]:
        """Return the points of an iteration in the order they were logged."""
        ids = self.metrics_of.get(iteration_id, {})
        rows = [self.metrics[metric_id] for metric_id in ids]
        rows.sort(key=lambda r: (r[_M_STAMP], r[_M_INDEX]))
        return rows

    # -- applying records ---------------------------------------------------------------------

    def apply_many(self, batches: Iterable[tuple[str, list[Record]]]) -> None:
        """Apply the records of several writers, merged in stamp order."""
        merged: list[tuple[Stamp, Record]] = []
        for writer, records in batches:
            for record in records:
                merged.append(((int(record.get("t", 0)), writer, int(record.get("n", 0))), record))
        merged.sort(key=lambda pair: pair[0])
        # Replaying a long log creates many small objects; the cyclic collector would rescan
        # them all again and again, so it waits until the replay is over.
        paused = len(merged) > 1000 and gc.isenabled()
        if paused:
            gc.disable()
        try:
            for stamp, record in merged:
                self.apply(stamp, record)
        finally:
            if paused:
                gc.enable()

    def apply(self, stamp: Stamp, record: Record) -> None:
        """Apply one record (unknown operations are skipped: a newer minor writer's extras)."""
        op = record.get("op")
        if op == "metrics":
            self._apply_metrics(stamp, record)
        elif op == "create":
            self._apply_create(stamp, record)
        elif op == "update":
            self._apply_update(stamp, record)
        elif op == "delete":
            self._apply_delete(record)
        elif op == "tag":
            self._apply_tag(record)

    def _apply_create(self, stamp: Stamp, record: Record) -> None:
        kind = record["kind"]
        row = dict(record["row"])
        row_id = row["id"]
        if row_id in self.deleted or kind not in self.rows:
            return
        self.rows[kind][row_id] = row
        self.created[row_id] = stamp
        parent_field = PARENT_FIELD[kind]
        if parent_field is not None:
            self.children.setdefault((kind, str(row[parent_field])), {})[row_id] = None
        if kind == "iteration" and row.get("parent_iteration_id") is not None:
            key = ("child", str(row["parent_iteration_id"]))
            self.children.setdefault(key, {})[row_id] = None
        for waiting_stamp, waiting in self._waiting.pop(row_id, []):
            self.apply(waiting_stamp, waiting)

    def _apply_update(self, stamp: Stamp, record: Record) -> None:
        kind = record["kind"]
        row_id = record["id"]
        if row_id in self.deleted:
            return
        if kind == "metric":
            self._update_metric(stamp, row_id, record)
            return
        row = self.rows.get(kind, {}).get(row_id)
        if row is None:
            self._waiting.setdefault(row_id, []).append((stamp, record))
            return
        stamps = self._field_stamps.setdefault(row_id, {})
        for field, value in record["set"].items():
            if stamps.get(field, (-1, "", -1)) < stamp:
                stamps[field] = stamp
                row[field] = value

    def _apply_delete(self, record: Record) -> None:
        kind = record["kind"]
        row_id = record["id"]
        self.deleted.add(row_id)
        self._waiting.pop(row_id, None)
        if kind == "metric":
            self._delete_metric(row_id)
            return
        row = self.rows.get(kind, {}).pop(row_id, None)
        if row is None:
            return
        parent_field = PARENT_FIELD[kind]
        if parent_field is not None:
            self.children.get((kind, str(row[parent_field])), {}).pop(row_id, None)

    def _apply_tag(self, record: Record) -> None:
        tag_id = record["tag_id"]
        if tag_id not in self.tags:
            self.tags[tag_id] = {"id": tag_id, "value": record["value"]}
            self.tag_by_value[record["value"]] = tag_id
        links = self.tag_links.setdefault((record["target"], str(record["target_id"])), {})
        links.setdefault(tag_id, record["id"])

    # -- metrics ------------------------------------------------------------------------------

    def _apply_metrics(self, stamp: Stamp, record: Record) -> None:
        iteration_id = record["iteration_id"]
        recorded_at = record.get("recorded_at")
        ids = self.metrics_of.setdefault(iteration_id, {})
        max_step = self.max_step
        for index, (metric_id, key, value, step) in enumerate(record["points"]):
            if metric_id in self.deleted:
                continue
            self.metrics[metric_id] = [
                metric_id,
                iteration_id,
                key,
                value,
                step,
                recorded_at,
                stamp,
                index,
            ]
            ids[metric_id] = None
            current = max_step.get((iteration_id, key))
            if current is None or step > current:
                max_step[(iteration_id, key)] = step
        self._sorted.pop(iteration_id, None)
        for metric_id, *_ in record["points"]:
            for waiting_stamp, waiting in self._waiting.pop(metric_id, []):
                self.apply(waiting_stamp, waiting)

    def _update_metric(self, stamp: Stamp, metric_id: str, record: Record) -> None:
        row = self.metrics.get(metric_id)
        if row is None:
            self._waiting.setdefault(metric_id, []).append((stamp, record))
            return
        old_key = row[_M_KEY]
        stamps = self._field_stamps.setdefault(metric_id, {})
        columns = {"key": _M_KEY, "value": _M_VALUE, "step": _M_STEP, "recorded_at": _M_AT}
        for field, value in record["set"].items():
            if field in columns and stamps.get(field, (-1, "", -1)) < stamp:
                stamps[field] = stamp
                row[columns[field]] = value
        iteration_id = row[_M_ITERATION]
        self._sorted.pop(iteration_id, None)
        self._recompute_max(iteration_id, old_key)
        self._recompute_max(iteration_id, row[_M_KEY])

    def _delete_metric(self, metric_id: str) -> None:
        row = self.metrics.pop(metric_id, None)
        if row is None:
            return
        iteration_id = row[_M_ITERATION]
        self.metrics_of.get(iteration_id, {}).pop(metric_id, None)
        self._sorted.pop(iteration_id, None)
        self._recompute_max(iteration_id, row[_M_KEY])

    def _recompute_max(self, iteration_id: str, key: str) -> None:
        steps = [
            self.metrics[m][_M_STEP]
            for m in self.metrics_of.get(iteration_id, {})
            if self.metrics[m][_M_KEY] == key
        ]
        if steps:
            self.max_step[(iteration_id, key)] = max(steps)
        else:
            self.max_step.pop((iteration_id, key), None)
