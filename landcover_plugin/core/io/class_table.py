"""The class table of a model trained on a user's labels: from the values of their class field.

Users label with class ids (1, 2, 7) or class names ("forest", "Water"); a categorized
style on their layer may name and colour them. Names that match the starting model's
classes keep that class's colour, and its row of the classifier head (see head_rows).
"""
from __future__ import annotations

from ..errors import InputError
from ..model.classes import NODATA_CLASS, LandClass

# Colours for classes neither the user's style nor the starting model colours: distinct on a
# map and from each other (ColorBrewer Set1/Dark2, then Paired).
PALETTE = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf", "#1b9e77",
           "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6cee3", "#b2df8a", "#fb9a99", "#fdbf6f")


def _as_id(value) -> int | None:
    """The class id a field value stands for, or None when it is a name."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _key(name: str) -> str:
    return " ".join(name.strip().lower().split())


def class_table(values, init_classes=(), styled=None, where: str = "the class field") -> tuple[LandClass, ...]:
    """Classes for the distinct non-empty `values` of a class field (ids or names).

    styled: {value: (name, colour)} from a categorized style on the labels (or a label
    raster's category names), if any. Ids keep their value and take their names from the
    style, else "class <id>": an id alone says nothing of what the class is. Names that
    match a class of the starting model keep its id; other names take the lowest free ids,
    in the style's order, else alphabetically.
    """
    styled = {_key(str(k)): v for k, v in (styled or {}).items()}
    init_by_name = {_key(c.name): c for c in init_classes}
    distinct = sorted({v.strip() if isinstance(v, str) else v for v in values}, key=str)
    if not distinct:
        raise InputError(f"No labelled polygons: {where} holds no class values.")
    ids = [_as_id(v) for v in distinct]
    palette = iter(c for c in PALETTE if c not in {ic.color for ic in init_classes})
    out = []
    if all(i is not None for i in ids):
        bad = [i for i in ids if not 0 <= i < NODATA_CLASS]
        if bad:
            raise InputError(f"Class id {bad[0]} in {where} is out of range; class ids go from 0 to 254 "
                             f"(255 means unlabelled).")
        for cid in sorted(set(ids)):
            name, colour = styled.get(str(cid), (None, None))
            name = name or f"class {cid}"
            match = init_by_name.get(_key(name))
            out.append(LandClass(cid, name, colour or (match.color if match else next(palette, "#808080"))))
    else:
        names = {_key(str(v)): str(v).strip() for v in distinct}
        order = [k for k in styled if k in names] + sorted(k for k in names if k not in styled)
        used = {init_by_name[k].id for k in order if k in init_by_name}
        free = iter(i for i in range(NODATA_CLASS) if i not in used)
        for k in order:
            # The value is the class's name (so that evaluating against the same polygons finds
            # it again); a style's label only names classes given by id.
            colour = styled.get(k, (None, None))[1]
            match = init_by_name.get(k)
            cid, name = (match.id, match.name) if match else (next(free), names[k])
            out.append(LandClass(cid, name, colour or (match.color if match else next(palette, "#808080"))))
        out.sort(key=lambda c: c.id)
    if len(out) < 2:
        raise InputError(f"The labels hold one class only ({out[0].name}); a model needs at least two: "
                         "digitize polygons of another class too.")
    return tuple(out)


def value_to_id(classes) -> dict:
    """{field value, as the user may write it: id, "id" or any case of the name: class id}."""
    out = {}
    for c in classes:
        out[_key(c.name)] = c.id
        out[str(c.id)] = c.id
    return out


def lookup(mapping: dict, value) -> int | None:
    """The class id of one field value under value_to_id's mapping, or None."""
    cid = _as_id(value)
    if cid is not None and str(cid) in mapping:
        return mapping[str(cid)]
    return mapping.get(_key(str(value))) if value is not None else None


def head_rows(classes, init_classes) -> list[tuple[int, int]]:
    """(row in the new head, row in the starting model's head) for every class whose name matches."""
    init = {_key(c.name): i for i, c in enumerate(init_classes)}
    return [(i, init[_key(c.name)]) for i, c in enumerate(classes) if _key(c.name) in init]
