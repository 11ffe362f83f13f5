import pytest

from landcover_plugin.core.errors import InputError
from landcover_plugin.core.io.bands import band_name, match_bands

S2 = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12")


def test_band_names_as_users_have_them():
    assert [band_name(d) for d in ("B2", "B02", "B2 (Blue)", "b8a", "B08 - NIR", "B8A", "B12", " B10 ")] == \
        ["B2", "B2", "B2", "B8A", "B8", "B8A", "B12", "B10"]
    assert [band_name(d) for d in ("", None, "Band 1", "Blue", "B2x", "NDVI")] == [None] * 6


def test_standard_stacks_without_names_are_read_in_their_order():
    l1c, note = match_bands(S2, 13)
    assert l1c == (2, 3, 4, 5, 6, 7, 8, 12, 13) and "13-band L1C" in note
    l2a, note = match_bands(S2, 12)
    assert l2a == (2, 3, 4, 5, 6, 7, 8, 11, 12) and "12-band L2A" in note
    nine, note = match_bands(S2, 9)
    assert nine == tuple(range(1, 10)) and "model's order" in note


def test_names_win_over_the_order_and_b8a_is_never_b8():
    names = ["B8A", "B8"] + [b for b in S2 if b != "B8"]
    bands, note = match_bands(S2, len(names), names)
    assert bands[S2.index("B8")] == 2 and "by their names" in note
    with pytest.raises(InputError, match="lack B8"):
        match_bands(S2, 9, ["B8A"] + [b for b in S2 if b != "B8"])


def test_chosen_bands_and_numbered_models_keep_their_rules():
    assert match_bands(S2, 13, (), (2, 3, 4, 5, 6, 7, 8, 12, 13)) == ((2, 3, 4, 5, 6, 7, 8, 12, 13), None)
    assert match_bands((1, 2, 3), 4) == ((1, 2, 3), None)
    with pytest.raises(InputError, match="choose 9 bands"):
        match_bands(S2, 13, (), (1, 2, 3))
    with pytest.raises(InputError, match="Band 5 does not exist"):
        match_bands((1, 2, 5), 4)
