"""The public cutout services: which URL asks each one for a colour cutout of a position.

Legacy Survey viewer (https://www.legacysurvey.org/viewer): `jpeg-cutout` and
`fits-cutout`, `layer` a data release (ls-dr10 by default), `pixscale` in
arcsec per pixel (native 0.262), `size` in pixels (at most 512). The FITS asks
for bands g, r, z: a (3, H, W) cube ordered blue to red, as zoomorph.io.fits reads it.

SDSS SkyServer DR18 (https://skyserver.sdss.org/dr18/SkyServerWS/ImgCutout):
`getjpeg`, the gri composite, `scale` in arcsec per pixel (native 0.396),
`width` and `height` in pixels (at most 2048). No FITS.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from zoomorph.errors import ZoomorphError


@dataclass(frozen=True)
class Service:
    name: str
    base_url: str
    endpoints: dict[str, str]  # format -> path under base_url
    native_pixscale: float  # arcsec per pixel: the default when neither --pixscale nor a radius is given
    max_size: int  # the service's largest side, in pixels
    default_layer: str | None  # None: the service has no layers


SERVICES = {
    "legacy": Service("legacy", "https://www.legacysurvey.org/viewer", {"jpeg": "jpeg-cutout", "fits": "fits-cutout"},
                      0.262, 512, "ls-dr10"),
    "sdss": Service("sdss", "https://skyserver.sdss.org/dr18/SkyServerWS/ImgCutout", {"jpeg": "getjpeg"},
                    0.396, 2048, None),
}
SUFFIXES = {"jpeg": ".jpg", "fits": ".fits"}


def service(name: str, format: str, size: int, layer: str | None) -> Service:
    """The service `name`, once it is known to serve `format` at `size` pixels (and `layer`, if given)."""
    if name not in SERVICES:
        raise ZoomorphError(f"survey {name!r}: choose one of {', '.join(SERVICES)}")
    found = SERVICES[name]
    if format not in found.endpoints:
        raise ZoomorphError(f"survey {name!r} serves {', '.join(found.endpoints)} cutouts, not {format!r}")
    if not 1 <= size <= found.max_size:
        raise ZoomorphError(f"size {size}: survey {name!r} serves cutouts of 1 to {found.max_size} pixels a side")
    if layer is not None and found.default_layer is None:
        raise ZoomorphError(f"survey {name!r} has no layers: leave out --layer")
    return found


def cutout_url(found: Service, format: str, ra: float, dec: float, pixscale: float, size: int,
               layer: str | None = None, base_url: str | None = None) -> str:
    """The URL of one cutout: `size` x `size` pixels of `pixscale` arcsec about (ra, dec), in degrees."""
    position = {"ra": f"{ra:.7f}", "dec": f"{dec:.7f}"}  # 1e-7 degree: 0.4 mas, far below a pixel
    scale = f"{pixscale:.6g}"
    if found.name == "sdss":
        params = {**position, "scale": scale, "width": size, "height": size}
    else:
        params = {**position, "layer": layer or found.default_layer, "pixscale": scale, "size": size}
        if format == "fits":
            params["bands"] = "grz"  # three planes, blue to red: the cube zoomorph.io.fits reads
    return f"{(base_url or found.base_url).rstrip('/')}/{found.endpoints[format]}?{urlencode(params)}"
