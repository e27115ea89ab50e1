"""Every file onnxq writes: checked before the work starts, written atomically, with the mode
the user expects.

``check_output`` runs before any image is read or session started, so a path that cannot be
written fails in the first second. ``atomic_write`` writes beside the target and moves the file
into place only when it is complete: a failure, Ctrl-C or SIGTERM (``remove_temporaries``)
leaves neither a partial output nor a temporary file. The result has the mode of the file it
replaces, or ``0o666`` less the umask, as a plain ``open()`` would give.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from onnxq.base.errors import OnnxqError

_temporaries: set[Path] = set()


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` as a ``Path`` if a file can be written there, else ``OnnxqError``.

    The folder must exist (onnxq creates none for a file output) and be writable; the path
    must not be a folder or end in a separator.
    """
    text = os.fspath(path)
    target = Path(text)
    if text.endswith(("/", os.sep)) or target.is_dir():
        raise OnnxqError(f"{text}: is a folder; name the {what} file")
    folder = target.parent
    if not folder.exists():
        raise OnnxqError(f"{folder}: no such folder for the {what}")
    if not folder.is_dir():
        raise OnnxqError(f"{folder}: not a folder")
    if not _writable(folder):
        raise OnnxqError(f"{folder}: permission denied (cannot write the {what} there)")
    if target.exists() and not target.is_file():
        raise OnnxqError(f"{target}: exists and is not a regular file")
    return target


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """A folder onnxq may create (with its parents) and write into."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OnnxqError(f"{folder}: exists and is not a folder (the {what})")
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir() or not _writable(existing):
        raise OnnxqError(f"{existing}: permission denied (cannot write the {what} there)")
    return folder


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``; it replaces ``path`` when the block succeeds.

    OS errors (full disk, read-only folder) become ``OnnxqError`` naming ``path``.
    """
    target = Path(path)
    try:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise _write_error(target, error) from None
    os.close(handle)
    temporary = Path(name)
    _temporaries.add(temporary)
    try:
        yield temporary
        os.chmod(temporary, _mode_for(target))
        os.replace(temporary, target)
    except OSError as error:
        raise _write_error(target, error) from None
    finally:
        temporary.unlink(missing_ok=True)
        _temporaries.discard(temporary)


def write_bytes(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file, then move it to ``path`` (``atomic_write``)."""
    with atomic_write(path) as temporary, open(temporary, "wb") as file:
        write(file)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, lambda file: file.write(text.encode()))


def remove_temporaries() -> None:
    """Delete the temporary files of writes still under way (SIGTERM)."""
    for temporary in list(_temporaries):
        temporary.unlink(missing_ok=True)
        _temporaries.discard(temporary)


def _mode_for(target: Path) -> int:
    """The mode of the file ``target`` replaces, else what ``open()`` would create."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _write_error(target: Path, error: OSError) -> OnnxqError:
    reason = os.strerror(error.errno) if error.errno else str(error)
    if error.errno == errno.ENOSPC:
        reason = "no space left on the device"
    return OnnxqError(f"cannot write {target}: {reason}")
