"""Track PyTorch Lightning runs in DearDiary.

The public API:

- :class:`DearDiaryLogger` and :class:`DearDiaryCallback` for the Lightning ``Trainer`` (and
  :class:`DearDiarySaveConfigCallback` for LightningCLI), configured by
  :class:`DearDiarySettings`;
- :func:`open_run` and :class:`RunWriter`, the non-blocking delivery pipeline underneath;
- :func:`connect` and :class:`Client`, DearDiary's logged-data API on a server or a local store,
  with the records, enums and exceptions it uses; :func:`sync` copies a local store to a server.

The Lightning, settings and delivery names are imported on first use, so that the client and
the ``deardiary-lightning`` command start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from deardiary_lightning.delivery import DearDiaryValueWarning, RunWriter, open_run
    from deardiary_lightning.lightning import (
        DearDiaryCallback,
        DearDiaryLogger,
        DearDiarySaveConfigCallback,
    )
    from deardiary_lightning.settings import DearDiarySettings, DearDiarySettingsError
    from deardiary_lightning.sync import sync

__version__ = "0.1.0"

_LAZY = {
    "DearDiaryCallback": "deardiary_lightning.lightning",
    "DearDiaryLogger": "deardiary_lightning.lightning",
    "DearDiarySaveConfigCallback": "deardiary_lightning.lightning",
    "DearDiarySettings": "deardiary_lightning.settings",
    "DearDiarySettingsError": "deardiary_lightning.settings",
    "DearDiaryValueWarning": "deardiary_lightning.delivery",
    "RunWriter": "deardiary_lightning.delivery",
    "open_run": "deardiary_lightning.delivery",
    "sync": "deardiary_lightning.sync",
}


def __getattr__(name: str) -> Any:
    """Import the Lightning, settings and delivery names when first used."""
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'deardiary_lightning' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "APIError",
    "AuthInfo",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "ConnectError",
    "DearDiaryCallback",
    "DearDiaryError",
    "DearDiaryLogger",
    "DearDiarySaveConfigCallback",
    "DearDiarySettings",
    "DearDiarySettingsError",
    "DearDiaryValueWarning",
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
    "RunWriter",
    "ServerError",
    "Tag",
    "TokenExpiredError",
    "TransportError",
    "UnprocessableError",
    "User",
    "__version__",
    "connect",
    "open_run",
    "sync",
]
