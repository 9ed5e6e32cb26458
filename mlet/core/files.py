"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file of this process beside ``target``, then rename it over ``target``: a reader, or
    another process writing the same name, sees the old file or a whole new one, never a torn or mixed one, and an
    interrupted write leaves no partial file. The temporary is removed whatever happens. An ``OSError`` names
    ``target``, not the temporary; a temporary that ``write`` did not create (torch's trace export logs its
    failures instead of raising) is one too."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        if not tmp.exists():
            raise FileNotFoundError(errno.ENOENT, "not written", str(target))
        os.replace(tmp, target)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(target)) from error
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
