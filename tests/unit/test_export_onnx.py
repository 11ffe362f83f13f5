import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import fixture_pixels, make_model

from landcover_plugin.core.model.model_file import save_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ort = pytest.importorskip("onnxruntime")


def test_onnx_agrees_with_torch_and_carries_deepness_metadata(tmp_path):
    net, spec = make_model(tile=64, overlap=16, gsd=0.5)
    model = tmp_path / "m.safetensors"
    save_model(str(model), net, spec)
    out = tmp_path / "m.onnx"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_onnx.py"), "--model", str(model),
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["model_type"]) == "Segmentor"
    assert json.loads(meta["class_names"]) == {"0": "background", "1": "building", "2": "woodland/vegetation",
                                               "3": "water", "4": "road"}
    assert json.loads(meta["resolution"]) == 50.0 and json.loads(meta["tile_size"]) == 64
    assert json.loads(meta["tiles_overlap"]) == 25
    mean, std = json.loads(meta["standardization_mean"]), json.loads(meta["standardization_std"])
    # Deepness's preprocessing: /255, then standardise with the metadata
    tiles = fixture_pixels()[:, :128, :128].reshape(3, 2, 64, 2, 64).transpose(1, 3, 0, 2, 4).reshape(4, 3, 64, 64)
    x01 = tiles.astype(np.float32) / 255.0
    feed = (x01 - np.array(mean, np.float32).reshape(1, 3, 1, 1)) / np.array(std, np.float32).reshape(1, 3, 1, 1)
    got = sess.run(None, {"input": feed.astype(np.float32)})[0]
    with torch.no_grad():
        x = (torch.from_numpy(tiles.astype(np.float32)) - torch.tensor(spec.mean).view(1, 3, 1, 1)) / \
            torch.tensor(spec.std).view(1, 3, 1, 1)
        want = torch.softmax(net(x), dim=1).numpy()
    assert got.shape == (4, 5, 64, 64)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.999
