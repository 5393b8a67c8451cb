"""Exceptions raised by the sandbox runtime.

Callers distinguish a bad spec (their fault, never retried) from a launcher that
went away (infrastructure, worth restarting) and from a sandbox that could not be
set up (host configuration, worth reporting to an operator).
"""


class SandboxError(Exception):
    """Base of every error the sandbox package raises on purpose."""


class SpecError(SandboxError, ValueError):
    """The spec is malformed or asks for something the sandbox refuses to do."""


class LauncherError(SandboxError):
    """The launcher process is not running or stopped answering."""


class SetupError(SandboxError):
    """Building the isolated environment failed before the command started."""


class SyscallError(SandboxError, OSError):
    """A raw system call made through ctypes failed; carries errno like OSError."""


class UidsExhaustedError(SandboxError):
    """Every host uid of the configured range is held by a running build.

    Not the caller's fault and not a broken host: the same spec may run once a
    build has finished.
    """
