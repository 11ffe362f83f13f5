"""Which raster bands feed a model: by the numbers the user chose, by the model's band numbers, or, for a
model that names its bands (Sentinel-2's B2 ... B12), by the raster's band descriptions or the standard
order of a 13-band L1C or 12-band L2A stack. One function for segment, train and change alike."""
from __future__ import annotations

import re

from ..errors import InputError

L1C_ORDER = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
L2A_ORDER = tuple(b for b in L1C_ORDER if b != "B10")  # sen2cor drops the cirrus band
_NAME = re.compile(r"^\s*(?:sentinel-?2\s*)?B0*(\d{1,2})(A?)(?![0-9A-Za-z])", re.IGNORECASE)


def band_name(description: str | None) -> str | None:
    """The Sentinel-2 band a description names ("B2", "B02", "B2 (Blue)", "b8a" -> "B8A"), else None."""
    m = _NAME.match(description or "")
    return f"B{int(m.group(1))}{m.group(2).upper()}" if m else None


def match_bands(wanted, count: int, descriptions=(), chosen=None) -> tuple[tuple[int, ...], str | None]:
    """(1-based bands of a `count`-band raster for a model whose bands are `wanted`, what the log should say
    of how they were matched or None); InputError naming what is missing."""
    n = len(wanted)
    if chosen:
        bands = tuple(chosen)
        if len(bands) != n:
            raise InputError(f"The model expects {n} input bands but {len(bands)} were chosen; choose {n} bands"
                             + (f" ({', '.join(map(str, wanted))})." if _named(wanted) else "."))
    elif not _named(wanted):
        bands = tuple(wanted)
    else:
        return _by_name(tuple(wanted), count, descriptions)
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise InputError(f"Band {bad[0]} does not exist: the raster has {count} band(s); choose bands from 1 to "
                         f"{count} ({n} of them, in the order the model expects).")
    return bands, None


def _named(wanted) -> bool:
    return bool(wanted) and all(isinstance(b, str) for b in wanted)


def _by_name(wanted: tuple[str, ...], count: int, descriptions) -> tuple[tuple[int, ...], str]:
    names = [band_name(d) for d in (tuple(descriptions or ()) + (None,) * count)[:count]]
    if any(names):
        where = {}
        for i, name in enumerate(names, 1):
            where.setdefault(name, i)
        missing = [b for b in wanted if b not in where]
        if missing:
            raise InputError(f"The model needs the Sentinel-2 bands {', '.join(wanted)}; this raster's bands are "
                             f"{', '.join(n or '?' for n in names)} and lack {', '.join(missing)}. Use a raster "
                             "that stacks them (band descriptions B2, B3, ...) or choose BANDS.")
        how = "by their names"
    elif count in (len(L1C_ORDER), len(L2A_ORDER)):
        order = L1C_ORDER if count == len(L1C_ORDER) else L2A_ORDER
        where = {b: i for i, b in enumerate(order, 1)}
        how = f"by the standard order of a {count}-band {'L1C' if count == 13 else 'L2A'} stack ({' '.join(order)})"
    elif count == len(wanted):
        where = {b: i for i, b in enumerate(wanted, 1)}
        how = "in the model's order (the raster's bands have no names)"
    else:
        raise InputError(f"The model needs the Sentinel-2 bands {', '.join(wanted)}, but this raster has {count} "
                         "band(s) without names; stack them in that order, name the bands (B2, B3, ...) "
                         "or choose BANDS.")
    bands = tuple(where[b] for b in wanted)
    return bands, f"Bands matched {how}: " + ", ".join(f"{b}=band {i}" for b, i in zip(wanted, bands)) + "."
