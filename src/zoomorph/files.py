"""Files written whole or not at all, so that a kill, a crash or a full disk never leaves half of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def replace_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) beside `target`, then rename tmp onto it: readers see the old file or the whole
    new one, and a write that fails (a full disk, an exception) leaves no tmp behind."""
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
