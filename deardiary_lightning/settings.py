"""Settings read from ``DEARDIARY_*`` environment variables and a ``.env`` file.

Every setting has a default, so nothing needs to be configured to log into the local store.
Values come from, highest priority first: arguments given to :class:`DearDiarySettings` (or to
the logger), environment variables, the ``.env`` file in the working directory, the defaults.

===========================  ===============================  ===================================
variable                     default                          meaning
===========================  ===============================  ===================================
``DEARDIARY_URL``            (none: the local store)          ``http(s)://`` DearDiary server;
                                                              or a local store path / fsspec URL
``DEARDIARY_USERNAME``       (none)                           sign in with this user ...
``DEARDIARY_PASSWORD``       (none)                           ... and this password (secret)
``DEARDIARY_TOKEN``          (none)                           or use this bearer token (secret)
``DEARDIARY_PROJECT``        ``default``                      project name, found or created
``DEARDIARY_EXPERIMENT``     ``default``                      experiment name, found or created
``DEARDIARY_STORE``          ``./deardiary``                  the local store: where runs go
                                                              without a server, and where they
                                                              wait while the server is down
``DEARDIARY_LOG_CHECKPOINTS``  ``false``                      ``false``, ``true`` (best and last
                                                              at the end) or ``all`` (every save)
``DEARDIARY_ITERATION_ID``   (none)                           resume this iteration
===========================  ===============================  ===================================

Secrets are :class:`pydantic.SecretStr`: they print as ``**********`` in reprs, logs and
error messages. A value that cannot be used raises :class:`DearDiarySettingsError`, which
names the setting and where the value came from (argument, environment variable or ``.env``
file) and never quotes a secret.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "CheckpointMode",
    "DearDiarySettings",
    "DearDiarySettingsError",
    "mask_url",
    "parse_checkpoint_mode",
]

#: What ``log_checkpoints`` accepts: ``False`` (off), ``True`` (best and last at the end) or
#: ``"all"`` (every checkpoint the moment it is saved).
CheckpointMode = Union[bool, Literal["all"]]

_ENV_PREFIX = "DEARDIARY_"
_SECRET_FIELDS = frozenset({"password", "token"})
_TRUE = frozenset({"true", "1", "yes", "on", "best", "last"})
_FALSE = frozenset({"false", "0", "no", "off", "none", ""})
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")


class DearDiarySettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting and its source."""


def parse_checkpoint_mode(value: Any) -> CheckpointMode:
    """Read a checkpoint mode from a bool or text.

    Args:
        value: ``True``/``False``, ``"all"``, or text such as ``"true"``, ``"false"``, ``"1"``.

    Returns:
        ``False``, ``True`` or ``"all"``.

    Raises:
        ValueError: Any other value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return "all"
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    msg = (
        f"{value!r} is not a checkpoint mode; use false (no checkpoints), true (best and last "
        "at the end of fitting) or all (every checkpoint when it is saved)"
    )
    raise ValueError(msg)


def mask_url(url: str) -> str:
    """Return a URL with the password of its user part replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>\g<user>:***@", url)


class DearDiarySettings(BaseSettings):
    """Where and how runs are recorded, from ``DEARDIARY_*`` variables and ``.env``.

    Example::

        settings = DearDiarySettings()                    # environment and .env
        settings = DearDiarySettings(project="digits")    # an argument wins over both

    Raises:
        DearDiarySettingsError: A value is invalid (the message names the variable or file).
    """

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    url: str | None = Field(
        default=None,
        description="DearDiary server (http:// or https://), or a local store path or fsspec "
        "URL; unset means the local store (see ``store``).",
    )
    username: str | None = Field(default=None, description="User to sign in with.")
    password: SecretStr | None = Field(default=None, description="Password of ``username``.")
    token: SecretStr | None = Field(default=None, description="Bearer token instead of a login.")
    project: str = Field(default="default", min_length=1, description="Project name.")
    experiment: str = Field(default="default", min_length=1, description="Experiment name.")
    store: str = Field(
        default="./deardiary",
        min_length=1,
        description="Local store: the destination without a server, the spool with one.",
    )
    log_checkpoints: CheckpointMode = Field(
        default=False, description="false, true (best and last at the end) or all."
    )
    iteration_id: int | str | None = Field(
        default=None, description="Resume this iteration instead of starting a new one."
    )
    sender_process: bool = Field(
        default=True,
        description="Send metric batches to an http:// server from a child process, which "
        "keeps the training loop's interpreter free; false sends them from threads.",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise DearDiarySettingsError(_explain(error, values)) from None

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "url" and isinstance(value, str):
                yield name, mask_url(value)
            else:
                yield name, value

    @field_validator("log_checkpoints", mode="before")
    @classmethod
    def _checkpoint_mode(cls, value: Any) -> CheckpointMode:
        return parse_checkpoint_mode(value)

    @field_validator("iteration_id", mode="before")
    @classmethod
    def _iteration_id(cls, value: Any) -> int | str | None:
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            return int(text) if text.isdigit() else text
        msg = f"{value!r} is not an iteration id; give the id as a number or text"
        raise ValueError(msg)

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> str | None:
        if value is None or isinstance(value, os.PathLike):
            return None if value is None else os.fspath(value)
        if isinstance(value, str):
            return value.strip() or None
        msg = f"expected a URL or a path, not {type(value).__name__}"
        raise ValueError(msg)

    def password_value(self) -> str | None:
        """Return the password in clear text (for the client only)."""
        return None if self.password is None else self.password.get_secret_value()

    def token_value(self) -> str | None:
        """Return the token in clear text (for the client only)."""
        return None if self.token is None else self.token.get_secret_value()


def _explain(error: ValidationError, values: dict[str, Any]) -> str:
    """Build a message naming each bad setting, its source and the fix, without secrets."""
    configured = values.get("_env_file", DearDiarySettings.model_config.get("env_file"))
    env_file = Path(str(configured or ".env"))
    lines = []
    for problem in error.errors(include_url=False, include_input=False):
        field = str(problem["loc"][0]) if problem["loc"] else "settings"
        source, raw = _source_of(field, values, env_file)
        reason = str(problem["msg"]).removeprefix("Value error, ")
        shown = "" if field in _SECRET_FIELDS or raw is None else f" = {raw!r}"
        lines.append(f"setting {field!r} from {source}{shown}: {reason}")
    return "invalid DearDiary settings: " + "; ".join(lines)


def _source_of(field: str, values: dict[str, Any], env_file: Path) -> tuple[str, Any]:
    """Tell where a setting's value came from: argument, environment or the ``.env`` file."""
    if field in values:
        return f"the argument {field}", values[field]
    variable = f"{_ENV_PREFIX}{field.upper()}"
    for name, value in os.environ.items():
        if name.upper() == variable:
            return f"environment variable {variable}", value
    if env_file.is_file():
        from dotenv import dotenv_values

        for key, text in dotenv_values(env_file).items():
            if key.upper() == variable:
                return f"{variable} in {env_file.resolve()}", text
    return "the default", None
