"""numba's `njit` for the decoding code (zoomorph.io.extent, decode.level_sky): compiled once and kept in
numba's cache, or compiled in each process where numba has nowhere to keep it.

numba keeps compiled code in NUMBA_CACHE_DIR when it is set, else next to the module, else in the user's
cache folder; where none of those is writable (a read-only install in a container with no writable home),
`cache=True` raises at import, and zoomorph would not import at all. It compiles instead, 15-25 s in each
process, and says so once.
"""

from __future__ import annotations

import warnings

from numba import njit

_warned = False


def compiled(function):
    """`function` compiled by numba (nopython, releasing the GIL), cached when numba can cache it."""
    global _warned
    try:
        return njit(cache=True, nogil=True)(function)
    except RuntimeError as err:  # numba: "cannot cache function ...: no locator available"
        if not _warned:
            _warned = True
            warnings.warn(f"numba cannot cache zoomorph's compiled code ({err}): fov auto compiles it in each "
                          "process (15-25 s). Set NUMBA_CACHE_DIR to a writable folder to compile it once",
                          RuntimeWarning, stacklevel=2)
        return njit(nogil=True)(function)
