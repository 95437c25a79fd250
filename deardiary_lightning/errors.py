"""Exceptions raised by the DearDiary client.

Every failure raised by this package derives from :class:`DearDiaryError`::

    DearDiaryError
    ├── TransportError              the server could not be reached or did not answer
    │   ├── ConnectError            no connection: the request was certainly not applied
    │   └── ResponseLostError       sent, but no answer: the request may have been applied
    │       └── ReadTimeoutError    the answer did not arrive in time
    └── APIError                    the server (or the local store) answered with an error
        ├── BadRequestError         400: the body could not be read
        ├── AuthenticationError     401: missing, invalid or expired credentials
        │   └── TokenExpiredError   401 TOKEN_EXPIRED: sign in again
        ├── PermissionDeniedError   403
        ├── NotFoundError           404
        ├── MethodNotAllowedError   405
        ├── ConflictError           409
        ├── UnprocessableError      422: a rule refused the write (ended iteration, ...)
        ├── RateLimitedError        429
        └── ServerError             5xx

Transport errors keep apart the two cases a careful writer must treat differently: a request
that never left (safe to send again) and one whose answer was lost (it may have landed, so
sending it again may store a row twice; see the delivery pipeline).

No exception carries a token or a password: URLs are stored without credentials.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectError",
    "DearDiaryError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "ReadTimeoutError",
    "ResponseLostError",
    "ServerError",
    "TokenExpiredError",
    "TransportError",
    "UnprocessableError",
    "api_error_for",
]


class DearDiaryError(Exception):
    """Base class of every error raised by ``deardiary_lightning``."""


class TransportError(DearDiaryError):
    """The server could not be reached, or its answer never arrived.

    Attributes:
        method: HTTP method of the failed request.
        url: URL of the failed request, without credentials.
    """

    #: Whether the server may have applied the request although no answer arrived.
    may_have_landed: bool = False

    def __init__(self, message: str, *, method: str, url: str) -> None:
        super().__init__(message)
        self.method = method
        self.url = url

    def __str__(self) -> str:
        return f"{self.args[0]} ({self.method} {self.url})"


class ConnectError(TransportError):
    """No connection could be opened; the request was certainly not applied."""


class ResponseLostError(TransportError):
    """The request was sent but its answer was lost; the server may have applied it."""

    may_have_landed = True


class ReadTimeoutError(ResponseLostError):
    """The request was sent but the answer did not arrive within the timeout."""


class APIError(DearDiaryError):
    """The server answered with an error status.

    The local store raises the same classes with the codes the server would use, so code that
    handles errors works unchanged on both backends.

    Attributes:
        status: HTTP status code (the one the server would send, for the local store).
        code: The server's error code (``"INVALID_PAYLOAD"``, ...). Generic errors without an
            envelope get ``"UNKNOWN"``.
        message: The server's message, or ``"HTTP <status>"`` when the body had none.
        method: HTTP method of the request (for the local store, the operation's verb).
        url: URL of the request without credentials (for the local store, the store's URL).
        retry_after: Seconds the server asked to wait (``Retry-After``), or ``None``.
    """

    retry_after: float | None = None

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        method: str,
        url: str,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.method = method
        self.url = url

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message} ({self.method} {self.url})"

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_api_error,
            (type(self), self.status, self.code, self.message, self.method, self.url),
        )


def _rebuild_api_error(
    cls: type[APIError], status: int, code: str, message: str, method: str, url: str
) -> APIError:
    """Rebuild an error after pickling (keyword-only arguments defeat the default)."""
    return cls(status, code, message, method=method, url=url)


class BadRequestError(APIError):
    """400: the server could not read the request body (wrong type, NaN, bad date-time)."""


class AuthenticationError(APIError):
    """401 or a failed sign-in: credentials are missing, wrong or no longer valid."""


class TokenExpiredError(AuthenticationError):
    """401 ``TOKEN_EXPIRED``: the token is too old; sign in again with the password."""


class PermissionDeniedError(APIError):
    """403: the signed-in user lacks a permission on the project."""


class NotFoundError(APIError):
    """404: the entity or the route does not exist."""


class MethodNotAllowedError(APIError):
    """405: the route exists but not with this method."""


class ConflictError(APIError):
    """409: a uniqueness rule refused the write (model name, tag already attached, ...)."""


class UnprocessableError(APIError):
    """422 ``INVALID_PAYLOAD``: a rule refused the write.

    Typical causes: the iteration has ended, the experiment is not IN_PROGRESS, the parent does
    not exist, an empty name or key.
    """


class RateLimitedError(APIError):
    """429: the server (or a proxy in front of it) asks to slow down."""


class ServerError(APIError):
    """5xx: the server failed while handling the request."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    422: UnprocessableError,
    429: RateLimitedError,
}


def api_error_for(status: int, code: str, message: str, *, method: str, url: str) -> APIError:
    """Build the most specific :class:`APIError` subclass for a status and an error code.

    Args:
        status: HTTP status code.
        code: Error code from the envelope, or ``"UNKNOWN"``.
        message: Human-readable message.
        method: HTTP method (or operation verb).
        url: URL without credentials.

    Returns:
        The exception, not raised.
    """
    if code == "TOKEN_EXPIRED":
        cls: type[APIError] = TokenExpiredError
    elif (
        code in ("INVALID_CREDENTIALS", "USER_NOT_FOUND")
        and method == "POST"
        and (url.rstrip("/").endswith("/auth"))
    ):
        cls = AuthenticationError
    elif status >= 500:
        cls = ServerError
    else:
        cls = _BY_STATUS.get(status, APIError)
    return cls(status, code, message, method=method, url=url)
