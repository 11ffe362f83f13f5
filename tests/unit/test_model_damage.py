"""Damaged model files, as a broken download or copy leaves them: every one is refused with one sentence
naming the file, or (where the damage touches nothing the model is made of) loads exactly as the intact file."""
import json
import logging
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_model

from landcover_plugin.core.errors import ModelFileError
from landcover_plugin.core.model.model_file import DIGEST_KEY, METADATA_KEY, load_model, save_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "damaged.safetensors"


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    net, spec = make_model(base_width=4, depth=2, tile=64, overlap=8)
    path = tmp_path_factory.mktemp("intact") / "model.safetensors"
    save_model(str(path), net, spec, calibration=np.arange(2 * 3 * 8 * 8, dtype=np.uint8).reshape(2, 3, 8, 8))
    network, spec = load_model(str(path))
    return path.read_bytes(), network.state_dict(), spec


def _split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _edited(blob: bytes, edit) -> bytes:
    """The file with its header changed by edit(header, tensor names) and its checksum left as it was."""
    header, data = _split(blob)
    edit(header, sorted(k for k in header if k != "__metadata__"))
    return _join(header, data)


def _meta_edit(change):
    def edit(header, _names):
        doc = json.loads(header["__metadata__"][METADATA_KEY])
        change(doc)
        header["__metadata__"][METADATA_KEY] = json.dumps(doc)
    return edit


def _tensor_edit(change):
    def edit(header, names):
        change(header[names[len(names) // 2]], header[names[0]])
    return edit


def _mutations(blob: bytes):
    """(what, bytes) for 240 damaged copies: flipped bits and bytes anywhere, truncations, lying header lengths,
    wrong dtypes, shapes and offsets, broken metadata."""
    rng = np.random.default_rng(7)
    (n,) = struct.unpack("<Q", blob[:8])
    for i in range(167):  # a third in the header, the rest in the tensor data
        at = int(rng.integers(8, 8 + n)) if i % 3 == 0 else int(rng.integers(8 + n, len(blob)))
        out = bytearray(blob)
        out[at] ^= (1 << int(rng.integers(8))) if i % 2 else int(rng.integers(1, 256))
        yield f"flip at {at}", bytes(out)
    for at in np.linspace(1, len(blob) - 1, 30).astype(int):
        yield f"truncated at {at}", blob[:at]
    for length in (0, 1, n - 8, n - 1, n + 1, n + 8, len(blob), len(blob) - 8, 2 ** 40, 2 ** 64 - 1):
        yield f"header length {length}", struct.pack("<Q", length) + blob[8:]
    for dtype in ("F16", "BF16", "I32", "U8", "F64", "XX"):
        yield f"dtype {dtype}", _edited(blob, _tensor_edit(lambda t, _, d=dtype: t.update(dtype=d)))
    for shape in ([1], [], [0], "swap", "double"):
        def reshape(t, _, s=shape):
            t["shape"] = (t["shape"][::-1] if s == "swap" else [2 * t["shape"][0]] + t["shape"][1:] if s == "double"
                          else s)
        yield f"shape {shape}", _edited(blob, _tensor_edit(reshape))
    for shift in (-4, 4, 8, -8):
        yield f"offsets +{shift}", _edited(blob, _tensor_edit(
            lambda t, _, s=shift: t.update(data_offsets=[t["data_offsets"][0] + s, t["data_offsets"][1] + s])))
    yield "offsets swapped", _edited(blob, _tensor_edit(
        lambda t, first: (t.__setitem__("data_offsets", first["data_offsets"]), first.__setitem__(
            "data_offsets", t["data_offsets"]))))
    yield "tensors renamed", _edited(blob, lambda h, names: h.__setitem__(names[1], h.pop(names[2])))
    metadata = [
        ("mean changed", lambda d: d["input"].__setitem__("mean", [m + 1 for m in d["input"]["mean"]])),
        ("std changed", lambda d: d["input"].__setitem__("std", [s * 2 for s in d["input"]["std"]])),
        ("bands swapped", lambda d: d["input"].__setitem__("bands", d["input"]["bands"][::-1])),
        ("class renamed", lambda d: d["classes"][1].__setitem__("name", "forest")),
        ("overlap changed", lambda d: d.__setitem__("overlap", d["overlap"] + 2)),
        ("tile changed", lambda d: d.__setitem__("tile_size", 128)),
        ("gsd changed", lambda d: d.__setitem__("gsd", 2.0)),
        ("classes dropped", lambda d: d.pop("classes")),
        ("format version", lambda d: d.__setitem__("format_version", 99)),
        ("architecture", lambda d: d["architecture"].__setitem__("depth", 3)),
        ("polygons", lambda d: d.__setitem__("polygons", {"min_area_m2": 9.0})),
        ("name", lambda d: d.__setitem__("name", "other")),
    ]
    for what, change in metadata:
        yield f"metadata: {what}", _edited(blob, _meta_edit(change))
    yield "metadata: not JSON", _edited(blob, lambda h, _: h["__metadata__"].__setitem__(METADATA_KEY, "{broken"))
    yield "metadata: gone", _edited(blob, lambda h, _: h.pop("__metadata__"))
    yield "checksum changed", _edited(blob, lambda h, _: h["__metadata__"].__setitem__(DIGEST_KEY, "0" * 64))
    yield "checksum and data changed", _edited(blob[:-1] + bytes([blob[-1] ^ 1]), lambda h, _: None)


def test_240_damaged_copies_are_refused_or_load_unchanged(intact, tmp_path):
    blob, state, spec = intact
    mutations = list(_mutations(blob))
    assert len(mutations) == 240 and len({m for _, m in mutations}) == 240
    refused, unchanged = 0, []
    path = tmp_path / NAME
    for what, data in mutations:
        path.write_bytes(data)
        try:
            network, got_spec = load_model(str(path))
        except ModelFileError as exc:
            text = str(exc)
            assert f'"{NAME}"' in text, (what, text)  # names the file
            assert "\n" not in text and text.endswith("."), (what, text)
            refused += 1
            continue
        got = network.state_dict()
        assert got_spec == spec and got.keys() == state.keys(), what
        assert all(torch.equal(got[k], state[k]) for k in state), f"{what}: loaded with changed weights"
        unchanged.append(what)
    assert refused >= 230, unchanged  # only damage to what nothing reads (header padding) may pass
    print(f"{refused} refused, {len(unchanged)} loaded unchanged: {unchanged}")


def test_data_damage_is_refused_as_damage(intact, tmp_path):
    blob, _, _ = intact
    out = bytearray(blob)
    out[-100] ^= 0x10  # one bit of a weight: the file is still a well-formed model
    path = tmp_path / NAME
    path.write_bytes(bytes(out))
    with pytest.raises(ModelFileError, match=f'"{NAME}" is damaged.*download or copy it again'):
        load_model(str(path))


def _without_checksum(blob: bytes) -> bytes:
    return _edited(blob, lambda h, _: h["__metadata__"].pop(DIGEST_KEY))


def test_a_file_from_before_checksums_loads_with_a_warning(intact, tmp_path, caplog):
    from landcover_plugin.core.model.model_file import read_spec

    blob, state, spec = intact
    path = tmp_path / "old.safetensors"
    path.write_bytes(_without_checksum(blob))
    with caplog.at_level(logging.WARNING, logger="landcover"):
        assert read_spec(str(path)) == spec  # the header alone: checked where the weights are loaded
        network, _ = load_model(str(path))
    warnings = [r.getMessage() for r in caplog.records if "checksum" in r.getMessage()]
    assert len(warnings) == 1 and '"old.safetensors"' in warnings[0] and "--checksum" in warnings[0]
    assert all(torch.equal(network.state_dict()[k], state[k]) for k in state)


def test_model_metadata_checksum_records_one_in_an_old_file(intact, tmp_path):
    blob, state, _ = intact
    path = tmp_path / "old.safetensors"
    path.write_bytes(_without_checksum(blob))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "model_metadata.py"), str(path),
                          "--checksum"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    header, _ = _split(path.read_bytes())
    assert len(header["__metadata__"][DIGEST_KEY]) == 64
    network, _ = load_model(str(path))
    assert all(torch.equal(network.state_dict()[k], state[k]) for k in state)
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(ModelFileError, match="is damaged"):
        load_model(str(path))


def test_the_bundled_models_carry_their_checksum():
    folder = os.path.join(ROOT, "landcover_plugin", "models")
    files = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    assert files
    for f in files:
        with open(os.path.join(folder, f), "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        assert len(header["__metadata__"].get(DIGEST_KEY, "")) == 64, f
