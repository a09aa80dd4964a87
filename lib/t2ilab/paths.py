"""Where the library finds the files it ships: the report notebooks and the configs (review prompts among them).

In a checkout they live at the top of the repo (notebooks/, configs/), where people open them; `_bundled/` links
to them, so a wheel (`pip install .`, not editable) carries the same files as package data and `t2ilab report`
works from any directory.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "_bundled"
NOTEBOOKS_DIR = PACKAGE_DATA / "notebooks"
CONFIGS_DIR = PACKAGE_DATA / "configs"
REVIEW_PROMPTS = CONFIGS_DIR / "review_prompts.yaml"


def checkout_root() -> Path | None:
    """The repo checkout this library runs from (an editable install), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "lib" / "t2ilab").is_dir() else None


def resolve_path(value: str | Path) -> Path:
    """Absolute: as is. Relative: from the working directory; else from the checkout's root or the package data
    when it exists only there (`configs/review_prompts.yaml` from any directory)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    if not p.exists():
        for base in (checkout_root(), PACKAGE_DATA):
            if base is not None and (base / p).exists():
                return base / p
    return p.resolve()


def caller_path(path: str | None) -> str | None:
    """A relative path as the user meant it: from the directory ./run_train.sh was called in (T2ILAB_CALLER_DIR)."""
    caller = os.environ.get("T2ILAB_CALLER_DIR")
    if not path or not caller or path == "latest" or Path(path).is_absolute():
        return path
    return str(Path(caller) / path)


def caller_overrides(overrides: list[str], keys: tuple[str, ...] = ("output_dir", "data.path")) -> list[str]:
    """`--set output_dir=runs/a` resolved from the caller's directory, like the path flags."""
    out = []
    for text in overrides:
        key, sep, value = text.partition("=")
        out.append(f"{key}={caller_path(value.strip())}" if sep and key.strip() in keys and value.strip() else text)
    return out
