"""Export an approved drop set as the curated index: CSV, JSON or Parquet."""

import json
import os
from pathlib import Path
from typing import Optional

import pandas as pd

from curator import decisions
from curator.store import Store

FORMATS = ("csv", "json", "parquet")
COLUMNS = ["index", "sample_id", "label", "influence", "decision"]


def curated_index(store: Store, run_id: str, approval_id: Optional[int] = None) -> pd.DataFrame:
    """Return the approved set's rows: ``index`` (0-based position in the training split),
    ``sample_id``, ``label``, ``influence``, ``decision``, and ``true_label`` when labels were flipped."""
    _, frame = decisions.read_approval(store, run_id, approval_id)
    columns = list(COLUMNS)
    if frame["true_label"].notna().any():
        columns.append("true_label")
    return frame[columns].sort_values("index").reset_index(drop=True)


def export(store: Store, run_id: str, output: str, fmt: Optional[str] = None,
           approval_id: Optional[int] = None) -> Path:
    """Write the curated index to ``output`` (format from ``fmt`` or the file suffix); return the path.

    The file is written to a temporary name and renamed, so an existing file is replaced whole or not
    at all. On failure the temporary file is removed.
    """
    path = Path(output).expanduser().resolve()
    fmt = check_output(path, fmt)
    frame = curated_index(store, run_id, approval_id)

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        elif fmt == "parquet":
            frame.to_parquet(tmp, index=False)
        else:
            tmp.write_text(to_json(frame))
        os.replace(tmp, path)
    except BaseException as error:
        if tmp.is_file():
            tmp.unlink()
        if isinstance(error, OSError):
            raise RuntimeError(f"writing the export to {path} failed ({error}); check the disk and the "
                               f"folder's permissions, or choose another --output") from error
        raise
    return path


def check_output(path: Path, fmt: Optional[str]) -> str:
    """Return the export format for ``path``; raise naming the path when it cannot be written there."""
    if path.is_dir():
        raise ValueError(f"export output {path} is a folder; give a file path such as {path / 'curated.csv'}")
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if not fmt:
        raise ValueError(f"export output {path} has no suffix to tell the format from; end it with .csv, "
                         f".json or .parquet, or pass --format")
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} for {path}; use one of {FORMATS}")

    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"export folder {folder} is a file, not a folder; choose another --output")
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder {folder} does not exist; create it or choose another --output")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"export folder {folder} is not writable by this user; choose another --output")
    return fmt


def to_json(frame: pd.DataFrame) -> str:
    """Return the rows as a JSON array of objects, with missing values as null."""
    records = json.loads(frame.to_json(orient="records", double_precision=15))
    return json.dumps(records, indent=1)


def to_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """Return the curated index encoded as ``fmt``, for a browser download."""
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    if fmt == "json":
        return to_json(frame).encode()
    if fmt == "parquet":
        return frame.to_parquet(index=False)
    raise ValueError(f"unknown export format {fmt!r}; use one of {FORMATS}")
