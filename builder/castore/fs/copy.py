"""Copying a blob file's bytes inside the kernel."""

from __future__ import annotations

import errno
import os

from builder.errors import IntegrityError

# copy_file_range is refused across filesystems on older kernels and by some
# filesystems altogether; sendfile then does the same job without sharing extents.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def copy_range(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes between descriptors; a source that shrinks is an integrity error.

    copy_file_range shares extents on filesystems that reflink, so a copy out of
    the store can cost no data blocks at all.
    """
    offset = 0
    use_copy_range = True
    while offset < size:
        if use_copy_range:
            try:
                copied = os.copy_file_range(src, dst, size - offset, offset, offset)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                use_copy_range = False
                continue
        else:
            os.lseek(dst, offset, os.SEEK_SET)
            copied = os.sendfile(dst, src, offset, size - offset)
        if copied == 0:
            raise IntegrityError(f"blob file shrank while copying it ({offset} of {size} bytes)")
        offset += copied
