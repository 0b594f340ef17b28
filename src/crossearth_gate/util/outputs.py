"""Output paths checked before any work: a folder under a regular file or on a read-only place is refused
in one line at once, not as a traceback after minutes of training or prediction."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import UserError


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_creatable(folder: Path, shown: Path, option: str) -> None:
    """``folder`` is, or can be made, a folder this process can create files in (``shown`` names it)."""
    found = _first_existing(folder.absolute())
    if not found.is_dir():
        where = "is a file" if found == shown.absolute() else f"lies under the file {found}"
        raise UserError(f"{option} {shown}: {where}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=found):
            pass
    except OSError as err:
        raise UserError(f"{option} {shown}: cannot write in {found} ({err.strerror or err})") from None


def check_out_folder(path: Path, option: str = "--out") -> None:
    """An output folder: an existing folder or a new one in a writable place."""
    _check_creatable(path, path, option)


def check_out_file(path: Path, option: str = "--out") -> None:
    """An output file: not a folder, in a folder that exists or can be made, writable."""
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file path")
    _check_creatable(path.parent, path, option)
