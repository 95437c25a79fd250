"""Packs on object stores: few objects read back, nothing lost or doubled around a crash.

The pack sizes are made small here (``PACK_FANOUT`` 4 or 8) so that a few hundred writes go
through every level; the code paths are the same as with the defaults.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import deardiary_lightning as dd
from deardiary_lightning.backends.local import LocalBackend
from deardiary_lightning.store import log as store_log
from deardiary_lightning.store.layout import MARKER_NAME
from deardiary_lightning.store.log import LogReader, LogWriter
from tests.local.conftest import StoreSpec, make_spec, s3_options
from tests.local.test_durability import _acks, _setup, _start_writer


@pytest.fixture
def small_packs(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    """Packs of 8 segments, and of 64 at the second level."""
    monkeypatch.setattr(store_log, "PACK_FANOUT", 8)
    monkeypatch.setattr(store_log, "PACK_LEVELS", 2)
    yield 8, 64


@pytest.fixture(params=["memory", "s3"])
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    """A fresh store of each kind that packs (memory and S3)."""
    return make_spec(request.param, tmp_path, request)


def _backend(client: dd.Client) -> LocalBackend:
    backend = client.backend
    assert isinstance(backend, LocalBackend)
    return backend


def _log_objects(client: dd.Client) -> list[str]:
    location = _backend(client).location
    location.fs.invalidate_cache()
    names = location.fs.find(location.path("log"))
    return sorted(str(name).rsplit("/", 1)[1] for name in names)


def _points(client: dd.Client, iteration: dd.Id) -> list[tuple[str, str, float, int]]:
    return [(str(m.id), m.key, m.value, m.step) for m in client.get_metrics(iteration)]


def _fill(client: dd.Client, iteration: dd.Id, start: int, stop: int) -> set[str]:
    """Log steps ``start..stop-1`` of two keys; return the acknowledged metric ids."""
    ids: set[str] = set()
    for step in range(start, stop):
        logged = client.log_metrics(iteration, {"a": float(step), "b": -step}, step=step)
        ids.update(str(metric_id) for metric_id in logged)
    return ids


def _check_exactly(client: dd.Client, iteration: dd.Id, acked: set[str], steps: int) -> None:
    rows = _points(client, iteration)
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)), "a point was read twice"
    assert set(ids) == acked
    assert Counter(row[1] for row in rows) == {"a": steps, "b": steps}


class _CountReads:
    """Counts the objects s3fs fetches (one GET each) below a prefix."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
        import s3fs

        self.paths: list[str] = []
        original = s3fs.S3FileSystem._cat_file

        async def counting(fs: Any, path: str, *args: Any, **kwargs: Any) -> Any:
            if path.startswith(prefix) and "/log/" in path:
                self.paths.append(path)
            return await original(fs, path, *args, **kwargs)

        monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", counting)


def test_long_s3_run_reads_few_objects(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_log, "PACK_FANOUT", 8)
    spec = make_spec("s3", tmp_path, request)
    prefix = spec.url.removeprefix("s3://")
    writer, iteration = _setup(spec)
    acked = _fill(writer, iteration, 0, 300)  # 303 writes: 3 creates, 300 batches

    # As after kill -9: no closing pack. 4 level-2 packs, 5 level-1 packs, 7 segments.
    objects = _log_objects(writer)
    assert len(objects) == 16, objects
    counter = _CountReads(monkeypatch, prefix)
    reader = spec.connect()
    _check_exactly(reader, iteration, acked, 300)
    assert len(counter.paths) == 16
    assert _backend(reader).location.version == 2

    # Closing packs the tail: one object more than the top-level packs.
    writer.close()
    assert len(_log_objects(writer)) == 5
    counter.paths.clear()
    _check_exactly(spec.connect(), iteration, acked, 300)
    assert len(counter.paths) == 5

    # The same run written without packs (what format 1 did) is read one object per write.
    monkeypatch.setattr(store_log, "PACK_FANOUT", 0)
    plain = make_spec("s3", tmp_path, request)
    unpacked, plain_iteration = _setup(plain)
    plain_acked = _fill(unpacked, plain_iteration, 0, 300)
    unpacked.close()
    plain_counter = _CountReads(monkeypatch, plain.url.removeprefix("s3://"))
    _check_exactly(plain.connect(), plain_iteration, plain_acked, 300)
    assert len(plain_counter.paths) == 303


def test_levels_and_close(object_store: StoreSpec, small_packs: tuple[int, int]) -> None:
    client, iteration = _setup(object_store)
    acked = _fill(client, iteration, 0, 130)  # 133 segments: 0..132
    loose = [f"{n:08d}.jsonl" for n in range(128, 133)]
    packs = ["00000000-00000063.pack", "00000064-00000127.pack"]
    assert _log_objects(client) == packs + loose  # level-1 packs and segments deleted
    client.close()
    assert _log_objects(client) == [*packs, "00000128-00000132.pack"]
    _check_exactly(object_store.connect(), iteration, acked, 130)

    # A closed client that writes again goes on packing; every reader sees each point once.
    acked |= _fill(client, iteration, 130, 150)
    client.close()
    _check_exactly(object_store.connect(), iteration, acked, 150)
    assert len(_log_objects(client)) <= 4


def _run_with_cleanup(
    spec: StoreSpec, monkeypatch: pytest.MonkeyPatch, keep: str
) -> tuple[dd.Client, dd.Id, set[str]]:
    """Write a run whose pack clean-ups are cut short as a crash would leave them."""
    rng = random.Random(7)
    original = LogWriter._delete

    def interrupted(self: LogWriter, paths: list[str]) -> None:
        if keep == "all":
            return
        doomed = [p for p in paths if rng.random() < 0.5]
        original(self, doomed)

    monkeypatch.setattr(LogWriter, "_delete", interrupted)
    client, iteration = _setup(spec)
    acked = _fill(client, iteration, 0, 150)
    return client, iteration, acked


@pytest.mark.parametrize("keep", ["all", "some"])
def test_crash_between_pack_and_cleanup(
    object_store: StoreSpec,
    small_packs: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
    keep: str,
) -> None:
    # A reader that follows the run while it is written reads segments before their packs.
    follower = object_store.connect()
    client, iteration, acked = _run_with_cleanup(object_store, monkeypatch, keep)
    objects = _log_objects(client)
    segments = [o for o in objects if o.endswith(".jsonl")]
    packs = [o for o in objects if o.endswith(".pack")]
    assert "00000000-00000063.pack" in packs and "00000064-00000127.pack" in packs
    if keep == "all":
        assert len(segments) == 153 and "00000000-00000007.pack" in packs
    else:
        assert 10 < len(segments) < 140

    # The store opens with every acknowledged point, each once; parameters too.
    _check_exactly(object_store.connect(), iteration, acked, 150)
    parameter = client.create_parameter(iteration, "lr", 0.1)
    assert [p.id for p in object_store.connect().get_parameters(iteration)] == [parameter]

    # A reader that had part of the run already takes the rest once.
    follower_rows = _points(follower, iteration)
    assert len(follower_rows) == 300
    more = _fill(client, iteration, 150, 200)
    _check_exactly(follower, iteration, acked | more, 200)
    client.close()
    _check_exactly(object_store.connect(), iteration, acked | more, 200)


def test_reader_follows_a_run_while_it_is_packed(
    object_store: StoreSpec, small_packs: tuple[int, int]
) -> None:
    client, iteration = _setup(object_store)
    follower = object_store.connect()
    acked: set[str] = set()
    seen = 0
    for start in range(0, 200, 13):
        acked |= _fill(client, iteration, start, min(start + 13, 200))
        rows = _points(follower, iteration)
        assert len({row[0] for row in rows}) == len(rows) >= seen
        seen = len(rows)
    _check_exactly(follower, iteration, acked, 200)


def test_objects_deleted_between_listing_and_read(
    object_store: StoreSpec, small_packs: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, iteration = _setup(object_store)
    acked = _fill(client, iteration, 0, 60)  # segments 0..62; the next write packs 0..63
    reader = object_store.connect()
    backend = _backend(reader)
    original = LogReader._list
    calls = []

    def list_then_pack(self: LogReader) -> Any:
        listing = original(self)
        calls.append(len(listing))
        if len(calls) == 1:
            # Between this listing and the reads, the writer packs and deletes segments.
            acked.update(_fill(client, iteration, 60, 70))
        return listing

    # The reader starts from nothing, so its first listing names segments about to vanish.
    fresh = LogReader(backend.location, "log")
    monkeypatch.setattr(LogReader, "_list", list_then_pack)
    batches = fresh.poll()
    assert len(calls) >= 2, "the reader should list again after objects vanished"
    records = [r for _, chunk in batches for r in chunk if r["op"] == "metrics"]
    ids = [point[0] for record in records for point in record["points"]]
    assert len(ids) == len(set(ids)) == len(acked)
    monkeypatch.setattr(LogReader, "_list", original)
    _check_exactly(reader, iteration, acked, 70)


def test_concurrent_writers_during_packing(
    object_store: StoreSpec, small_packs: tuple[int, int]
) -> None:
    setup, iteration = _setup(object_store)
    writers = [object_store.connect() for _ in range(2)]
    acked: list[set[str]] = [set(), set()]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for step in range(120):
                values = {f"w{index}": float(step)}
                logged = writers[index].log_metrics(iteration, values, step=step)
                acked[index].update(str(metric_id) for metric_id in logged)
            writers[index].close()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    reader = object_store.connect()
    seen = 0
    while any(thread.is_alive() for thread in threads):
        rows = _points(reader, iteration)
        assert len({row[0] for row in rows}) == len(rows) >= seen
        seen = len(rows)
    for thread in threads:
        thread.join()
    assert not errors
    everything = acked[0] | acked[1]
    for client in (reader, object_store.connect(), writers[0], setup):
        rows = _points(client, iteration)
        assert {row[0] for row in rows} == everything and len(rows) == 240


def test_format_1_object_store_keeps_its_segments(
    object_store: StoreSpec, small_packs: tuple[int, int]
) -> None:
    # A store created by a 1.x package: packs are added beside the segments, nothing deleted,
    # so 1.x readers (which read only *.jsonl) still see everything.
    first = object_store.connect()
    location = _backend(first).location
    marker = {"format": "deardiary-local-store", "version": 1, "created_by": "1.x"}
    location.fs.pipe_file(location.path(MARKER_NAME), json.dumps(marker).encode())
    client, iteration = _setup(object_store)
    assert _backend(client).location.version == 1
    acked = _fill(client, iteration, 0, 100)
    client.close()
    objects = _log_objects(client)
    assert len([o for o in objects if o.endswith(".jsonl")]) == 103
    assert any(o.endswith(".pack") for o in objects)

    location.fs.invalidate_cache()
    old_style = [
        json.loads(line)
        for path in location.fs.find(location.path("log"))
        if str(path).endswith(".jsonl")
        for line in location.fs.cat_file(path).splitlines()
    ]
    old_ids = {p[0] for r in old_style if r["op"] == "metrics" for p in r["points"]}
    assert old_ids == acked
    _check_exactly(object_store.connect(), iteration, acked, 100)
    marker_now = json.loads(location.fs.cat_file(location.path(MARKER_NAME)))
    assert marker_now["version"] == 1


def test_kill_9_while_packing_on_s3(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    spec = make_spec("s3", tmp_path, request)
    client, iteration = _setup(spec)
    writer = _start_writer(spec, iteration, "w", 100_000, pack_fanout=4)
    assert writer.stdout is not None
    try:
        acked, params = _acks(writer.stdout, limit=150)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert any(o.endswith(".pack") for o in _log_objects(client))

    reopened = spec.connect()
    rows = reopened.get_metrics(iteration)
    ids = [m.id for m in rows]
    assert len(ids) == len(set(ids))
    assert set(acked) <= set(ids)
    assert len(ids) - len(acked) in (0, 2)  # at most the batch in flight at the kill
    assert set(params) <= {p.id for p in reopened.get_parameters(iteration)}
    client.close()


def test_unreachable_s3_store_raises_connect_error() -> None:
    options = s3_options("http://127.0.0.1:9")
    options["secret"] = "s3cr3t-never-shown"
    options["config_kwargs"] = {"retries": {"max_attempts": 1}, "connect_timeout": 2}
    url = "s3://deardiary-local-tests/unreachable"
    with pytest.raises(dd.ConnectError) as info:
        dd.connect(url, storage_options=options)
    error = info.value
    assert isinstance(error, dd.DearDiaryError)
    assert error.url == url
    assert url in str(error) and "storage_options" in str(error)
    assert "s3cr3t" not in str(error) and "s3cr3t" not in repr(error)


@pytest.mark.parametrize("landed", [False, True])
def test_failed_writes_and_refused_packs(
    small_packs: tuple[int, int], monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    spec = StoreSpec("memory", f"memory://packs-{random.getrandbits(64):x}", {})
    client, iteration = _setup(spec)
    follower = spec.connect()
    fs = _backend(client).location.fs
    original = fs.pipe_file
    failing = {"segment": False, "pack": 0}

    def flaky(path: str, data: bytes, **kwargs: Any) -> None:
        if path.endswith(".jsonl") and failing["segment"]:
            failing["segment"] = False
            if landed:  # the PUT was applied but its answer was lost
                original(path, data, **kwargs)
            raise OSError("connection reset")
        if path.endswith(".pack") and failing["pack"] > 0:
            failing["pack"] -= 1
            raise OSError("slow down")
        original(path, data, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", flaky)
    acked = _fill(client, iteration, 0, 3)  # segments 3..5
    failing["segment"] = True
    with pytest.raises(dd.ResponseLostError):
        client.log_metrics(iteration, {"a": 3.0, "b": -3.0}, step=3)  # segment 6
    assert len(_points(follower, iteration)) == (8 if landed else 6)
    failing["pack"] = 2  # the first pack (0..7) is refused twice, then written
    acked |= _fill(client, iteration, 4, 30)
    assert "00000000-00000007.pack" in _log_objects(client)
    client.close()

    expected = len(acked) + (2 if landed else 0)
    for reader in (follower, spec.connect()):
        rows = _points(reader, iteration)
        assert len(rows) == len({row[0] for row in rows}) == expected
        assert acked <= {row[0] for row in rows}
