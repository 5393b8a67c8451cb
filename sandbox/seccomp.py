"""The system call filter every build runs under, the one Nix's sandbox installs.

Making a file setuid or setgid fails with EPERM: scratch directories may be
the host's own file system, where such a file would be there for anyone who
can reach it, for as long as it is left. Setting extended attributes fails
with ENOTSUP: a store path cannot represent them, so a build must not come to
depend on them. Everything else is allowed; isolation is the namespaces' job.

A 64-bit x86 process can also enter the kernel through the i386 and x32 system
call tables, so on x86_64 the program covers those too.

libseccomp compiles the program once and the launcher installs it on itself
at start-up, before any PID 1 is cloned: a filter is inherited by every child
and kept across execve, so each PID 1, the command and everything it starts
carry it without a per-build cost (installing it in each PID 1 took about
0.15 ms of every build). Nothing the launcher or PID 1 does needs what the
filter refuses.
"""

import errno
import os
import stat

import pyseccomp

from sandbox import privileges, syscalls
from sandbox.errors import SetupError

_MODE_ARGUMENTS = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2}
_XATTR_SETTERS = ("setxattr", "lsetxattr", "fsetxattr")


def compile_filter() -> bytes:
    """The program as classic BPF, ready for ``install``."""
    try:
        return _compile()
    except OSError as exc:
        raise SetupError(f"cannot compile the system call filter: {exc}") from exc


def _compile() -> bytes:
    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    if pyseccomp.system_arch() == pyseccomp.Arch.X86_64:
        rules.add_arch(pyseccomp.Arch.X86)
        rules.add_arch(pyseccomp.Arch.X32)
    denied = pyseccomp.ERRNO(errno.EPERM)
    for name, argument in _MODE_ARGUMENTS.items():
        # Newer architectures have no chmod or fchmod, and libseccomp releases
        # still in use may not know fchmodat2.
        if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) < 0:
            continue
        for bit in (stat.S_ISUID, stat.S_ISGID):
            rules.add_rule(denied, name, pyseccomp.Arg(argument, pyseccomp.MASKED_EQ, bit, bit))
    for name in _XATTR_SETTERS:
        rules.add_rule(pyseccomp.ERRNO(errno.ENOTSUP), name)
    fd = os.memfd_create("sandbox-seccomp", os.MFD_CLOEXEC)
    with open(fd, "w+b") as program:
        rules.export_bpf(program)
        program.seek(0)
        return program.read()


def confine_self(program: bytes) -> None:
    """Filter this process and all it starts from now on.

    no_new_privs comes first: an unprivileged process may install a filter
    only with it, and the launcher never execs anything that needs privileges.
    """
    privileges.forbid_privilege_gain()
    syscalls.set_seccomp_filter(program)
