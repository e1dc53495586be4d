"""`predict --healpix ORDER`: a HEALPix pixel per row, from the catalogue's RA and Dec, to partition big outputs
on the sky.

The index is nested (neighbouring pixels have nearby numbers, and pixel p of order n holds pixels 4p..4p+3
of order n+1), at nside = 2**ORDER, from astropy-healpix (`pip install 'zoomorph[healpix]'`). RA and Dec
are the first pair of ra/dec, ra_deg/dec_deg (any case) among the listing's columns, in degrees unless
their unit says otherwise. A row without both (an image given outside the catalogue, a null, a Dec
beyond the poles) has a null pixel.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zoomorph.errors import MissingExtra, ZoomorphError
from zoomorph.io.tables import POSITION_COLUMNS, notes_of, with_notes

COLUMN = "healpix"
MAX_ORDER = 29  # nside 2**29: the finest an int64 nested index holds


def check_healpix(order: int) -> None:
    """Before anything is listed: the order is one there is, and astropy-healpix is installed."""
    if not 0 <= order <= MAX_ORDER:
        raise ZoomorphError(f"healpix order {order}: it must be 0 to {MAX_ORDER} (nside = 2**order)")
    if importlib.util.find_spec("astropy_healpix") is None:
        raise MissingExtra("--healpix needs astropy-healpix: pip install 'zoomorph[healpix]'")


class Healpix:
    """The HEALPix column of one listing: which columns hold RA and Dec, in what unit."""

    def __init__(self, order: int, schema: pa.Schema):
        names = {name.lower(): name for name in schema.names}
        pair = next(((names[ra], names[dec]) for ra, dec in POSITION_COLUMNS if ra in names and dec in names), None)
        if pair is None:
            raise ZoomorphError("--healpix needs RA and Dec columns in the catalogue (any case: "
                                f"{', '.join(f'{ra}/{dec}' for ra, dec in POSITION_COLUMNS)}); the inputs have "
                                f"{', '.join(schema.names)}")
        for name in pair:
            kind = schema.field(name).type
            if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
                raise ZoomorphError(f"--healpix: column {name} holds {kind}, not numbers (degrees)")
        self.order, self.ra, self.dec = order, *pair
        self.scale = [_degrees(name, notes_of(schema.field(name)).get("unit")) for name in pair]
        self.field = with_notes(pa.schema([(COLUMN, pa.int64())]), {COLUMN: {
            "description": f"HEALPix pixel of ({self.ra}, {self.dec}): nested, order {order}, nside {2 ** order}"}})[0]

    def of(self, listing: pa.Table) -> pa.Array:
        """The pixel of each row of a listing chunk (null where RA or Dec is missing or impossible)."""
        from astropy import units as u
        from astropy_healpix import HEALPix  # the optional extra, checked by check_healpix

        ra, dec = (pc.fill_null(listing[name].cast(pa.float64()), np.nan).to_numpy() * scale
                   for name, scale in zip((self.ra, self.dec), self.scale))
        good = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
        pixels = np.zeros(len(ra), np.int64)
        if good.any():
            grid = HEALPix(nside=2 ** self.order, order="nested")
            pixels[good] = grid.lonlat_to_healpix(ra[good] * u.deg, dec[good] * u.deg)
        return pa.array(pixels, mask=~good)


def _degrees(name: str, unit: str | None) -> float:
    """The factor from a column's unit to degrees (1 without a unit)."""
    if not unit:
        return 1.0
    from astropy import units as u  # astropy: only with --healpix and a unit

    try:
        return float(u.Unit(unit).to(u.deg))
    except (ValueError, u.UnitsError) as err:
        raise ZoomorphError(f"--healpix: column {name} has unit {unit!r}, not an angle") from err
