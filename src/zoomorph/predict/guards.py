"""What predict may write over: its --out is checked before anything is written.

* OUT is never one of the inputs: a file given, a file a folder given would list
  (an image or FITS name inside it), or a file a catalogue lists. Files are
  compared by device and inode, so that links and other spellings of a path count.
* An existing OUT (and a Kaggle submission's OUT.errors.csv) is replaced only
  when OUT is predict's own finished output (writers.finished), when a predict
  into OUT is under way (OUT.parts holds its manifest), or with overwrite=True.
"""

from __future__ import annotations

import os
from pathlib import Path

from zoomorph.errors import ZoomorphError
from zoomorph.io.sources import is_fits, is_image_name
from zoomorph.predict.listing import Listing
from zoomorph.predict.writers import MANIFEST, errors_path, finished, parts_dir


def _identity(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, or not a path at all (a catalogue row without one)
        return None
    return st.st_dev, st.st_ino


def check_out(out: Path, inputs: list, fmt: str, overwrite: bool) -> None:
    """Refuse an --out that is a folder, that is (or would replace) an input, or that would replace a file
    that is not predict's own; one stat per input given."""
    if out.is_dir():
        raise ZoomorphError(f"--out {out} is a directory: give a file name, e.g. {out / 'predictions.parquet'}")
    folder = next((p for p in out.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ZoomorphError(f"--out {out}: {folder} is a file, not a folder")
    targets = [out, errors_path(out)] if fmt == "kaggle" else [out]
    for target in targets:
        _not_an_input(target, inputs)
    if overwrite or finished(out) is not None or (parts_dir(out) / MANIFEST).exists():
        return
    existing = next((t for t in targets if t.exists()), None)
    if existing is not None:
        raise ZoomorphError(f"--out {out}: {existing} exists and is not an output of zoomorph predict; refusing to "
                         "replace it (give --overwrite to replace it, or another --out)")


def _not_an_input(target: Path, inputs: list) -> None:
    itself = _identity(target)
    folders = set()
    if is_image_name(target.name) or is_fits(target.name):  # a folder's walk would list it
        real = Path(os.path.realpath(target.parent))
        folders = {_identity(p) for p in (real, *real.parents)} - {None}
    for item in map(os.fspath, inputs):
        found = _identity(item)
        if found is not None and found == itself:
            raise ZoomorphError(f"--out {target} is the input {item}: predicting would overwrite it; "
                                "give another --out")
        if found in folders:
            raise ZoomorphError(f"--out {target} is inside the input folder {item}, which predict reads: "
                             "give an --out outside it")


def check_not_listed(out: Path, listing: Listing) -> None:
    """Refuse an existing --out that a catalogue lists as an input: rows are matched by file name first, so
    this reads each listed path once and stats only those named like OUT."""
    itself = _identity(out)
    if itself is None:
        return
    names = (out.name, os.path.basename(os.path.realpath(out)))
    for k in range(listing.n_chunks):
        for source in listing.sources(k):
            if isinstance(source, str) and source.endswith(names) and _identity(source) == itself:  # not an Unusable
                raise ZoomorphError(f"--out {out} is an input: it is listed as {source}, and predicting would "
                                 "overwrite it; give another --out")
