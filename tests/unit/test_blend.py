import numpy as np
import pytest
import torch
from conftest import cuda, fixture_pixels, make_model

from landcover_plugin.core.inference.blend import StripBlender
from landcover_plugin.core.inference.rowbuffer import RowBuffer
from landcover_plugin.core.inference.sliding import predict_array, predict_probabilities
from landcover_plugin.core.inference.windows import blend_weights, window_grid
from landcover_plugin.core.model.predictor import Predictor


def _blend(field, tile, overlap, skip=()):
    """Blend windows cut from a known score field; return the image the blender emits."""
    c, h, w = field.shape
    ys, xs = window_grid(h, w, tile, overlap)
    out = np.full(field.shape, np.nan)
    hits = np.zeros((h, w), int)
    strips = []
    wt = blend_weights(tile, overlap)

    def emit(r, col, block):
        assert np.all(np.isnan(out[:, r:r + block.shape[1], col:col + block.shape[2]]))
        out[:, r:r + block.shape[1], col:col + block.shape[2]] = block.numpy()
        hits[r:r + block.shape[1], col:col + block.shape[2]] += 1

    blender = StripBlender(h, w, c, tile, overlap, ys, xs, emit, strips.append)
    for k, y in enumerate(ys):
        for j, x in enumerate(xs):
            iy = np.clip(np.arange(y, y + tile), 0, h - 1)
            ix = np.clip(np.arange(x, x + tile), 0, w - 1)
            win = field[:, iy][:, :, ix] * wt
            blender.add(k, j, None if (k, j) in skip else torch.from_numpy(win))
    return out, hits, strips, blender


@pytest.mark.parametrize("h,w,tile,overlap", [(300, 211, 64, 16), (40, 30, 64, 16), (129, 500, 128, 0),
                                              (257, 257, 128, 63)])
def test_blended_constant_windows_reproduce_the_field(h, w, tile, overlap):
    rng = np.random.default_rng(1)
    field = rng.random((3, h, w)).astype(np.float32)
    out, hits, strips, _ = _blend(field, tile, overlap)
    assert np.all(hits == 1), "every pixel is emitted exactly once"
    np.testing.assert_allclose(out, field, atol=1e-5)
    assert strips[-1] == h and strips == sorted(strips)


def test_buffers_do_not_grow_with_height():
    f1 = np.ones((2, 100, 90), np.float32)
    f2 = np.ones((2, 1000, 90), np.float32)
    _, _, _, b1 = _blend(f1, 64, 16)
    _, _, _, b2 = _blend(f2, 64, 16)
    assert b1.col.shape == b2.col.shape and b1.carry.shape == b2.carry.shape


def test_windows_out_of_order_are_refused():
    ys, xs = window_grid(100, 100, 64, 16)
    b = StripBlender(100, 100, 1, 64, 16, ys, xs, lambda *a: None, lambda r: None)
    with pytest.raises(RuntimeError):
        b.add(0, 1, None)


def test_rowbuffer_writes_whole_block_rows_once():
    written = []
    buf = RowBuffer(10, 70, 16, 24, [(1, np.int32, -1)], lambda r, arrs: written.append((r, arrs[0].copy())))
    row = 0
    while row < 70:
        n = min(24, 70 - row)
        buf.put(row, 0, [np.full((1, n, 10), row, np.int32) + np.arange(n)[None, :, None]])
        row += n
        buf.done_until(row)
    rows = np.concatenate([a[0] for _, a in written])
    np.testing.assert_array_equal(rows[:, 0], np.arange(70))
    starts = [r for r, _ in written]
    assert all(s % 16 == 0 for s in starts)


def _strip_cases(device):
    marks = [cuda] if device == "cuda" else []
    return [pytest.param(device, *case, marks=marks)
            for case in [(300, 211, 64, 16, 16), (40, 30, 64, 16, 256), (257, 129, 128, 63, 32)]]


@pytest.mark.parametrize("device,h,w,tile,overlap,block", _strip_cases("cpu") + _strip_cases("cuda"))
def test_strips_gathered_on_the_device_write_what_direct_puts_write(device, h, w, tile, overlap, block):
    """The GPU path (a strip gathered, copied, handed on one strip late), also exercised on the CPU."""
    from landcover_plugin.core.inference.strips import host_sink

    device = torch.device(device)

    field = np.random.default_rng(2).random((3, h, w)).astype(np.float32)
    results = {}
    for gather in (False, True):
        out = np.full((h, w), -1, np.int32)

        def write(r, arrs, out=out):
            assert r % block == 0 or r + arrs[0].shape[1] == h
            out[r:r + arrs[0].shape[1]] = arrs[0][0]

        buf = RowBuffer(w, h, block, tile, [(1, np.int32, 0)], write)
        put, done_until = host_sink(buf, device, w, tile, [(1, torch.int32)], gather)
        ys, xs = window_grid(h, w, tile, overlap)
        blender = StripBlender(h, w, 3, tile, overlap, ys, xs,
                               lambda r, c, s, put=put: put(r, c, [(s * 1000).to(torch.int32)[:1]]), done_until,
                               device)
        wt = blend_weights(tile, overlap)
        for k, y in enumerate(ys):
            for j, x in enumerate(xs):
                iy = np.clip(np.arange(y, y + tile), 0, h - 1)
                ix = np.clip(np.arange(x, x + tile), 0, w - 1)
                blender.add(k, j, torch.from_numpy(field[:, iy][:, :, ix] * wt).to(device))
        results[gather] = out
    assert (results[True] >= 0).all()
    np.testing.assert_array_equal(results[True], results[False])
    assert np.abs(results[True] - field[0] * 1000).max() < 1.001


def test_probabilities_of_an_array_are_what_its_labels_are_the_argmax_of():
    net, spec = make_model()
    image = fixture_pixels()[:, :150, :170]
    k = len(spec.classes)
    pred = Predictor(net, spec.mean, spec.std, blend_weights(64, 16), torch.device("cpu"), 4, precision="fp32")
    probs = predict_probabilities(pred, image, k, 64, 16)
    assert probs.shape == (k, 150, 170) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    # strips gathered as on a GPU bring back the same values
    np.testing.assert_array_equal(predict_probabilities(pred, image, k, 64, 16, gather=True), probs)
    labels = predict_array(pred, image, k, 64, 16)
    assert len(np.unique(labels)) > 1  # an untrained net that called everything one class would prove nothing
    assert (probs.argmax(axis=0) == labels).mean() > 0.999  # ties between float sums may break differently


def test_background_writer_writes_every_row_in_order_and_raises_its_errors():
    import threading

    from landcover_plugin.core.inference.rowbuffer import BackgroundWriter

    written, threads = [], set()

    def write(row0, arrays):
        threads.add(threading.current_thread().name)
        written.append((row0, arrays[0].copy()))

    writer = BackgroundWriter(write)
    buf = np.zeros((1, 4, 3), np.int32)
    for row0 in range(0, 40, 4):
        buf[:] = row0  # the caller's buffer moves on as soon as the call returns
        writer(row0, [buf])
    writer.close()
    assert [r for r, _ in written] == list(range(0, 40, 4))
    assert all((a == r).all() for r, a in written)
    assert threads == {"landcover-writer"}

    def failing(row0, arrays):
        if row0 >= 8:
            raise OSError("disk full")

    writer = BackgroundWriter(failing, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for row0 in range(0, 400, 4):  # the error surfaces at a later call, and no call blocks for ever
            writer(row0, [buf])
        writer.close()
    writer.close(raise_error=False)
