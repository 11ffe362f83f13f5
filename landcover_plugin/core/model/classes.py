"""Class tables: ids, names and colours of land-cover classes."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ModelFileError

_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
NODATA_CLASS = 255


@dataclass(frozen=True)
class LandClass:
    id: int
    name: str
    color: str  # "#rrggbb"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i:i + 2], 16) for i in (1, 3, 5))

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "color": self.color}


# The LandCover.ai encoding used by every labelled set in this project.
DEFAULT_CLASSES = (
    LandClass(0, "background", "#d9d0c1"),
    LandClass(1, "building", "#d7301f"),
    LandClass(2, "woodland/vegetation", "#2e8b3a"),
    LandClass(3, "water", "#2b7bd6"),
    LandClass(4, "road", "#5c5c5c"),
)


def parse_classes(items, where: str = "model file") -> tuple[LandClass, ...]:
    """Validate a list of {id, name, color} dicts; raise ModelFileError naming the problem."""
    if not isinstance(items, list) or not items:
        raise ModelFileError(f"The {where} has no class list; it needs a list of classes with id, name and color.")
    out, seen = [], set()
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ModelFileError(f"Class number {n} in the {where} is not an object with id, name and color.")
        cid, name, color = item.get("id"), item.get("name"), item.get("color")
        if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < NODATA_CLASS:
            raise ModelFileError(
                f"Class number {n} in the {where} has no valid id (an integer from 0 to 254 is needed).")
        if cid in seen:
            raise ModelFileError(f"Class id {cid} appears twice in the {where}.")
        if not isinstance(name, str) or not name.strip():
            raise ModelFileError(f"Class {cid} in the {where} has no name.")
        if not isinstance(color, str) or not _COLOR.match(color):
            raise ModelFileError(
                f"Class {cid} ({name}) in the {where} has no valid color; give one as \"#rrggbb\".")
        seen.add(cid)
        out.append(LandClass(cid, name.strip(), color.lower()))
    return tuple(out)
