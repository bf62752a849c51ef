"""Every error the spooler reports, flat, each with the HTTP status it maps to.

The HTTP layer turns any ``SpoolError`` into ``{"error": ..., "detail": ...}``
with ``status``; code below the HTTP layer raises these and never builds
responses itself. The command line prints ``detail`` as one line.
"""

import errno


class SpoolError(Exception):
    """Base class: ``error`` is a short machine-readable slug, ``detail`` a sentence."""

    status = 500
    error = "internal_error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(SpoolError):
    status = 400
    error = "bad_request"


class InvalidName(BadRequest):
    """A job id, host, config, dataset or site name that fails its pattern."""

    error = "invalid_name"


class Unauthorized(SpoolError):
    status = 401
    error = "unauthorized"


class Forbidden(SpoolError):
    """A caller without the role an action needs, or a file the API will not serve (a job's link out of its folder)."""

    status = 403
    error = "forbidden"


class NotFound(SpoolError):
    status = 404
    error = "not_found"


class Conflict(SpoolError):
    status = 409
    error = "conflict"


class IllegalTransition(Conflict):
    """A state change the lifecycle does not allow; nothing was changed."""

    error = "illegal_transition"


class PayloadTooLarge(SpoolError):
    status = 413
    error = "payload_too_large"


class Unavailable(SpoolError):
    """A dependency (MongoDB, Docker, the shared root) cannot be reached."""

    status = 503
    error = "unavailable"


class InsufficientStorage(SpoolError):
    """The shared root is full (ENOSPC, or over quota): nothing was published."""

    status = 507
    error = "insufficient_storage"


# A write refused by the shared root itself: the request may be retried once an operator freed space or
# remounted the share read-write. EDQUOT is a quota, ENOSPC a full disk (or no inodes left).
_STORAGE_ERRORS = {
    errno.ENOSPC: (InsufficientStorage, "the shared root is full"),
    errno.EDQUOT: (InsufficientStorage, "the shared root's quota is exhausted"),
    errno.EROFS: (Unavailable, "the shared root is read-only"),
}


def storage_error(exc: OSError) -> SpoolError | None:
    """The 507/503 for a write the share refused (full, over quota, read-only), or None for any other OSError."""
    known = _STORAGE_ERRORS.get(exc.errno)
    if known is None:
        return None
    error, what = known
    return error(f"{what} ({exc.strerror}): nothing was written; try again once it is fixed",
                 reason=errno.errorcode[exc.errno])


class SettingsError(SpoolError):
    """A setting with an invalid value, an unknown setting, or an unreadable settings file.

    Raised while a command starts, before any HTTP: a configuration fault of the server, never the
    client's, so it keeps the base 500 should it ever reach a response.
    """

    error = "invalid_settings"


class RuntimeFailure(Exception):
    """A runtime could not start a job (missing image, bad command); the job fails with this reason."""

    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
