"""The product's typed errors.

Every layer raises these; one table maps them to gRPC status codes and back
(``builder.castore.grpc.status``), so a message written here reaches the client
unchanged and a client raises the same error again.
"""

from __future__ import annotations


class BuilderError(Exception):
    """Base of every error the product reports to a caller."""


class InvalidArgumentError(BuilderError):
    """The caller sent something malformed: a field breaks a protocol rule."""


class NotFoundError(BuilderError):
    """A digest or name the caller referred to is not known."""


class FailedPreconditionError(BuilderError):
    """The request is well-formed but cannot run in the current state."""


class ResourceExhaustedError(BuilderError):
    """A bound was reached (queue length, size limit)."""


class CancelledError(BuilderError):
    """The work was cancelled before it finished."""


class SignalledError(CancelledError):
    """A signal (Ctrl-C, a kill) stopped a command; ``signum`` says which, for its exit status."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class BuildFailedError(BuilderError):
    """The build ran and did not succeed."""


class UnavailableError(BuilderError):
    """A backend this service depends on could not be reached."""


class IntegrityError(BuilderError):
    """Stored or received data does not match the digest it was addressed by."""


class CommandFailedError(BuildFailedError):
    """The build command ran and ended badly; the fields say how."""

    def __init__(
        self,
        message: str,
        exit_code: int | None = None,
        signal: int | None = None,
        limit: str | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.signal = signal
        self.limit = limit
