"""Writing files whole and JSON that loads anywhere: one atomic writer and one JSON cleaner for the whole library."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def jsonable(x: Any) -> Any:
    """Plain JSON types: numpy/torch scalars unwrapped, tuples and arrays as lists, NaN/inf as None, paths as strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and callable(x.tolist) and getattr(x, "ndim", 0) > 0:
        return jsonable(x.tolist())  # numpy arrays and tensors
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        x = x.item()  # numpy / torch scalars
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (bool, int, str)):
        return x
    return str(x)


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], Any], durable: bool = False) -> Path:
    """Write through a temp file in the same folder and rename: a crash or a kill never leaves half a file.

    `durable` also fsyncs before the rename (checkpoint manifests: the rename must not land before the bytes)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str, durable: bool = False) -> Path:
    """A text file (UTF-8), written whole."""
    return write_atomically(path, lambda f: f.write(text.encode("utf-8")), durable=durable)


def write_json(path: str | Path, obj: Any, durable: bool = False, sort_keys: bool = True) -> Path:
    """`obj` cleaned by `jsonable`, indented, written whole; strict JSON (no NaN)."""
    return write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=sort_keys, allow_nan=False), durable=durable)


def read_json(path: str | Path) -> dict | None:
    """A JSON object from a file, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
