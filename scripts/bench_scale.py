"""One raster on several devices at once, and in blocks on local Dask clusters, against one process."""
from __future__ import annotations

import os
import tempfile
import time

from bench_common import PRECISION_CHOICES, make_raster

import _common


def cmd_parts(args) -> dict:
    """One raster on one device, then on several at once (a process each): speed, and whether the outputs agree."""
    import numpy as np
    import rasterio

    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.segment import SegmentOptions, segment

    model = load_model(resolve_model_path(args.model))
    result = {"bench": "parts"}
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        raster = args.input or make_raster(os.path.join(tmp, "in.tif"), args.size)
        outputs = {}
        for run, device in (("single", args.single), ("parts", args.devices)):
            cls, conf = os.path.join(tmp, f"{run}.tif"), os.path.join(tmp, f"{run}_conf.tif")
            t0 = time.perf_counter()
            res = segment(raster, cls, model, confidence_path=conf, log=lambda m: None,
                          options=SegmentOptions(device=device, precision=args.precision, batch_size=args.batch_size,
                                                 tile_size=args.tile, overlap=args.overlap))
            seconds = time.perf_counter() - t0
            with rasterio.open(cls) as a, rasterio.open(conf) as b:
                outputs[run] = a.read(1), b.read(1)
            result.update({f"device_{run}": res.device, f"precision_{run}": res.precision,
                           f"seconds_{run}": round(seconds, 3), f"mp_per_s_{run}": round(res.megapixels / seconds, 4)})
            print(f"{run}: {res.megapixels:.2f} MP in {seconds:.2f} s on {res.device} in {res.precision}", flush=True)
    (la, ca), (lb, cb) = outputs["single"], outputs["parts"]
    result.update(megapixels=round(la.size / 1e6, 3), identical_labels=bool(np.array_equal(la, lb)),
                  label_agreement=float((la == lb).mean()), max_confidence_difference=float(np.abs(ca - cb).max()),
                  speedup=round(result["seconds_single"] / result["seconds_parts"], 3))
    print(f"parts / single speed {result['speedup']}; labels identical: {result['identical_labels']} "
          f"({100 * result['label_agreement']:.4f}% agree); confidence differs by at most "
          f"{result['max_confidence_difference']:.2g}")
    return result


def cmd_cluster(args) -> dict:
    """One raster in this process, then in blocks on local Dask clusters of 1, 2... workers: blocks per second,
    MP/s, the cluster path's overhead against the in-process run, and whether the class rasters are equal."""
    import numpy as np
    import rasterio
    from distributed import Client, LocalCluster

    from landcover_plugin.core.inference.cluster import Cluster
    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.segment import SegmentOptions, segment

    model = load_model(resolve_model_path(args.model))
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        raster = args.input or make_raster(os.path.join(tmp, "in.tif"), args.size)
        t0 = time.perf_counter()
        res = segment(raster, os.path.join(tmp, "local.tif"), model, log=lambda m: None,
                      options=SegmentOptions(device="cpu", precision=args.precision))
        local_s = time.perf_counter() - t0
        with rasterio.open(res.class_path) as ds:
            reference = ds.read(1)
        print(f"in-process: {res.megapixels:.2f} MP in {local_s:.2f} s ({res.megapixels / local_s:.3f} MP/s, "
              f"{res.precision})", flush=True)
        for workers in args.workers:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
                    Client(lc) as client:
                client.run(lambda: None)  # workers up before the clock starts
                logs = []
                t0 = time.perf_counter()
                res = segment(raster, os.path.join(tmp, f"cluster{workers}.tif"), model, log=logs.append,
                              options=SegmentOptions(device="cpu", precision=args.precision, cluster=Cluster(
                                  client, os.path.join(tmp, "spool"), args.block_size, max(1, cores // workers))))
                seconds = time.perf_counter() - t0
            with rasterio.open(res.class_path) as ds:
                labels = ds.read(1)
            same, agreement = bool(np.array_equal(labels, reference)), float((labels == reference).mean())
            blocks = int(next(m for m in logs if "block(s) of rows" in m).split()[0])
            row = {"workers": workers, "blocks": blocks, "seconds": round(seconds, 3),
                   "blocks_per_s": round(blocks / seconds, 4), "mp_per_s": round(res.megapixels / seconds, 4),
                   "overhead_vs_in_process": round(seconds / local_s, 3), "identical_classes": same,
                   "torch_threads_per_worker": max(1, cores // workers), "label_agreement": agreement}
            rows.append(row)
            print(f"{workers} worker(s): {blocks} blocks in {seconds:.2f} s, {row['blocks_per_s']} blocks/s, "
                  f"{row['mp_per_s']} MP/s, {row['overhead_vs_in_process']}x the in-process time; classes "
                  f"identical: {same} ({100 * agreement:.5f}% agree; {max(1, cores // workers)} torch thread(s) a "
                  f"worker, {cores} in-process)", flush=True)
    return {"bench": "cluster", "size": args.size, "block_size": args.block_size, "cores": cores,
            "in_process_seconds": round(local_s, 3), "rows": rows}


def add_parsers(sub) -> None:
    """parts and cluster."""
    pa = sub.add_parser("parts", help="one raster on one device and on several at once: speed, identical outputs")
    pa.add_argument("--devices", default="cuda:all", help="the several: " + _common.DEVICE_HELP)
    pa.add_argument("--single", default="auto", help="the one device compared with")
    pa.add_argument("--size", type=int, default=4096)
    pa.add_argument("--input", help="a real raster instead")
    pa.add_argument("--model")
    pa.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    pa.add_argument("--batch-size", type=int, default=0)
    pa.add_argument("--tile", type=int)
    pa.add_argument("--overlap", type=int)
    pa.add_argument("--workdir", default=None)
    cl = sub.add_parser("cluster", help="one raster in this process and in blocks on local Dask clusters")
    cl.add_argument("--size", type=int, default=2048)
    cl.add_argument("--input", help="a real raster instead")
    cl.add_argument("--block-size", type=int, default=1024)
    cl.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    cl.add_argument("--model")
    cl.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES)
    cl.add_argument("--workdir", default=None)
