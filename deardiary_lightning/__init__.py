"""Track PyTorch Lightning runs in DearDiary.

The public API: :func:`connect` opens a :class:`Client` on a DearDiary server or on a local
store; the records, enums and exceptions it uses are exported here too.
"""

from __future__ import annotations

from deardiary_lightning.client import Client, connect
from deardiary_lightning.entities import (
    AuthInfo,
    Experiment,
    ExperimentStatus,
    Health,
    Id,
    Iteration,
    IterationStatus,
    Metric,
    Model,
    ModelStage,
    ModelVersion,
    PaginatedResponse,
    Pagination,
    Parameter,
    Project,
    Resource,
    Tag,
    User,
)
from deardiary_lightning.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectError,
    DearDiaryError,
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ReadTimeoutError,
    ResponseLostError,
    ServerError,
    TokenExpiredError,
    TransportError,
    UnprocessableError,
)

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthInfo",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "ConnectError",
    "DearDiaryError",
    "Experiment",
    "ExperimentStatus",
    "Health",
    "Id",
    "Iteration",
    "IterationStatus",
    "MethodNotAllowedError",
    "Metric",
    "Model",
    "ModelStage",
    "ModelVersion",
    "NotFoundError",
    "PaginatedResponse",
    "Pagination",
    "Parameter",
    "PermissionDeniedError",
    "Project",
    "RateLimitedError",
    "ReadTimeoutError",
    "Resource",
    "ResponseLostError",
    "ServerError",
    "Tag",
    "TokenExpiredError",
    "TransportError",
    "UnprocessableError",
    "User",
    "__version__",
    "connect",
]
