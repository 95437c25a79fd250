"""Typed records returned by the client, with the server's field names.

Ids are opaque: a DearDiary v0.9.1 server uses integers, later builds use UUID strings. Every id
attribute keeps the JSON type it arrived with (:data:`Id`), and the client sends it back as it
came. Never compare ids numerically or infer order from them.

Date-times are naive :class:`~datetime.datetime` values in the server's convention (the server's
local wall clock, see :mod:`deardiary_lightning.wire`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar, Union

from deardiary_lightning.wire import parse_datetime

__all__ = [
    "AuthInfo",
    "Experiment",
    "ExperimentStatus",
    "Health",
    "Id",
    "Iteration",
    "IterationStatus",
    "Metric",
    "Model",
    "ModelStage",
    "ModelVersion",
    "PaginatedResponse",
    "Pagination",
    "Parameter",
    "Project",
    "Resource",
    "Tag",
    "User",
]

#: An entity id as the server sent it: ``int`` (v0.9.1) or ``str`` (UUID builds).
Id = Union[int, str]

T = TypeVar("T")
E = TypeVar("E", bound="_Entity")


class ExperimentStatus(enum.IntEnum):
    """Status of an experiment (``status_id`` on the wire)."""

    IN_PROGRESS = 1
    STOPPED = 2
    FINISHED = 3


class IterationStatus(enum.IntEnum):
    """Status of an iteration (``status_id`` on the wire)."""

    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    KILLED = 4


class ModelStage(enum.IntEnum):
    """Stage of a model version (``stage_id`` on the wire)."""

    NO_STAGE = 1
    STAGING = 2
    PRODUCTION = 3
    ARCHIVED = 4


@dataclasses.dataclass(frozen=True)
class Pagination:
    """Bounds of one page of a list.

    Args:
        limit: Rows per page; the server clamps it to 0..200 (default 50).
        offset: Rows to skip; negative values count as 0.
    """

    limit: int = 50
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class PaginatedResponse(Generic[T]):
    """One page of a list, with the total row count.

    Attributes:
        data: The rows of this page.
        total: How many rows the whole list has.
        limit: The page size the server used.
        offset: The offset the server used.
    """

    data: list[T]
    total: int
    limit: int
    offset: int


_DATETIME_FIELDS = frozenset(
    {"created_date", "updated_date", "end_date", "recorded_at", "server_time"}
)


@dataclasses.dataclass(frozen=True)
class _Entity:
    """Base of the records: builds itself from a wire object, ignoring unknown keys."""

    @classmethod
    def from_wire(cls: type[E], obj: Mapping[str, Any]) -> E:
        """Build the record from a decoded JSON object.

        Args:
            obj: The JSON object as sent by the server (or stored by the local store).

        Returns:
            The record; keys the record does not know are ignored, date-times are parsed.
        """
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in obj or field.name == "data":
                continue
            value = obj[field.name]
            if field.name in _DATETIME_FIELDS and isinstance(value, str):
                value = parse_datetime(value)
            kwargs[field.name] = value
        return cls(**kwargs)

    def to_wire(self) -> dict[str, Any]:
        """Return the record as a JSON-ready object (date-times in the server's format)."""
        from deardiary_lightning.wire import format_datetime

        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, datetime):
                value = format_datetime(value)
            out[field.name] = value
        return out


@dataclasses.dataclass(frozen=True)
class Health(_Entity):
    """Answer of ``GET /health``."""

    app_name: str = ""
    package_version: str = ""
    server_time: datetime | None = None


@dataclasses.dataclass(frozen=True)
class User(_Entity):
    """A user, as the server shows it (never with a password)."""

    id: Id
    username: str
    first_name: str = ""
    last_name: str = ""
    created_date: datetime | None = None
    is_admin: bool = False


@dataclasses.dataclass(frozen=True)
class AuthInfo:
    """What a sign-in or a refresh returned, without the token itself.

    Attributes:
        user: The signed-in user.
        expires_at: The token's ``exp`` claim in Unix seconds, as the server computed it (off by
            the server's UTC offset; see the REST API notes).
        token_type: Normally ``"Bearer"``.
    """

    user: User
    expires_at: int
    token_type: str = "Bearer"


@dataclasses.dataclass(frozen=True)
class Project(_Entity):
    """A project: the top of the hierarchy."""

    id: Id
    name: str
    description: str = ""
    created_date: datetime | None = None


@dataclasses.dataclass(frozen=True)
class Experiment(_Entity):
    """An experiment of a project; it holds iterations and resources."""

    id: Id
    project_id: Id
    name: str
    status_id: int = ExperimentStatus.IN_PROGRESS
    description: str = ""
    created_date: datetime | None = None
    end_date: datetime | None = None

    @property
    def status(self) -> ExperimentStatus:
        """The status as an enum member."""
        return ExperimentStatus(self.status_id)


@dataclasses.dataclass(frozen=True)
class Iteration(_Entity):
    """One run of an experiment. It is locked for writes once ``end_date`` is set."""

    id: Id
    experiment_id: Id
    notes: str = ""
    created_date: datetime | None = None
    end_date: datetime | None = None
    parent_iteration_id: Id | None = None
    status_id: int = IterationStatus.RUNNING
    error_message: str = ""
    julia_version: str = ""
    git_sha: str = ""
    git_dirty: bool = False
    entrypoint: str = ""
    project_toml: str = dataclasses.field(default="", repr=False)
    manifest_toml: str = dataclasses.field(default="", repr=False)

    @property
    def status(self) -> IterationStatus:
        """The status as an enum member."""
        return IterationStatus(self.status_id)

    @property
    def ended(self) -> bool:
        """Whether the iteration is ended (and therefore read-only)."""
        return self.end_date is not None


@dataclasses.dataclass(frozen=True)
class Parameter(_Entity):
    """A key/value parameter of an iteration; the value is always text."""

    id: Id
    iteration_id: Id
    key: str
    value: str


@dataclasses.dataclass(frozen=True)
class Metric(_Entity):
    """One point of a metric series of an iteration."""

    id: Id
    iteration_id: Id
    key: str
    value: float
    step: int
    recorded_at: datetime | None = None


@dataclasses.dataclass(frozen=True)
class Resource(_Entity):
    """Metadata of an artifact of an experiment. The bytes come from ``read_resource_data``.

    ``data`` is always ``None``: reads return metadata only.
    """

    id: Id
    experiment_id: Id
    name: str
    description: str = ""
    created_date: datetime | None = None
    updated_date: datetime | None = None
    backend: str = ""
    uri: str = ""
    size_bytes: int = 0
    content_hash: str = ""
    data: None = None


@dataclasses.dataclass(frozen=True)
class Tag(_Entity):
    """A tag value (one global row per distinct value)."""

    id: Id
    value: str


@dataclasses.dataclass(frozen=True)
class Model(_Entity):
    """A registered model of a project."""

    id: Id
    project_id: Id
    name: str
    description: str = ""
    created_date: datetime | None = None
    updated_date: datetime | None = None


@dataclasses.dataclass(frozen=True)
class ModelVersion(_Entity):
    """A numbered version of a model, produced by an iteration."""

    id: Id
    model_id: Id
    version: int
    iteration_id: Id
    resource_id: Id | None = None
    stage_id: int = ModelStage.NO_STAGE
    description: str = ""
    created_date: datetime | None = None
    updated_date: datetime | None = None

    @property
    def stage(self) -> ModelStage:
        """The stage as an enum member."""
        return ModelStage(self.stage_id)
