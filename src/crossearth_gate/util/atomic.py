"""Atomic file writes: a killed process never leaves a half-written artefact behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import WriteError


def write_failure(err: BaseException) -> str | None:
    """Why a write failed when the file system refused it (full disk, I/O error), else None (a bug).

    Writers report this differently: Python and PIL raise OSError with an errno, safetensors an
    "I/O error" SafetensorError, torch.save a RuntimeError from its zip writer.
    """
    text = " ".join(str(err).split())
    if isinstance(err, OSError) and err.errno is not None:
        return err.strerror or text
    if type(err).__name__ == "SafetensorError" and "I/O error" in text:
        return text.partition("I/O error: ")[2]
    if isinstance(err, RuntimeError) and "inline_container" in text:
        return f"the file could not be written (full disk or I/O error; torch: {text.rpartition('. ')[2]})"
    return None


def atomic_write(path: str | Path, write: Callable[[str], None],
                 verify: Callable[[str], None] | None = None) -> Path:
    """Call ``write(tmp_path)`` (then ``verify(tmp_path)``) and rename the temporary file over ``path``.

    A failed write raises WriteError naming ``path`` and leaves whatever was at ``path`` untouched.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        write(tmp)
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 (and writers may recreate it): ordinary files
        os.replace(tmp, path)
    except Exception as err:
        reason = write_failure(err)
        if reason is None:
            raise
        raise WriteError(f"cannot write {path}: {reason}; nothing was replaced") from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, _write)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
