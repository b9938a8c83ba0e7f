"""Small file-system helpers shared by every writer: atomic writes and output checks."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from dsvae.errors import DsvaeError


def check_output_path(path: str | os.PathLike, overwrite: bool = False, what: str = "output") -> Path:
    """Validate an output file path before any work is done.

    Refuses an existing file unless ``overwrite``, a missing or unwritable parent
    folder, and a path that is a directory. Returns the path as a :class:`Path`.
    """
    path = Path(path)
    if path.is_dir():
        raise DsvaeError(f"{what} {path} is a directory, expected a file path")
    if path.exists() and not overwrite:
        raise DsvaeError(f"{what} {path} already exists (pass --overwrite to replace it)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DsvaeError(f"cannot create folder {parent} for {what}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DsvaeError(f"cannot write {what} {path}: folder {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    On any exception the temporary file is removed, so a failed or interrupted
    writer never leaves a file that looks finished.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
