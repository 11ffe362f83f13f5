"""One raster's rows on a Dask cluster: blocks of whole rows run as tasks, each exactly as that part of a
run on one machine (multidevice.run_rows: the strip of windows above it, the whole image's batches), so
the class raster is the one-machine run's, every pixel.

A block's finished rows come back to this process and are kept in a spool folder (one file a block,
written under a temporary name and renamed when whole): a rerun of the same job skips the blocks found
there, and only this process writes the outputs, from the spool. A worker that dies has its blocks run
again by Dask. Workers need only the input (a path they can open: shared storage, /vsis3/, /vsicurl/)
and this package; the network reaches each worker once (scattered), and each keeps its predictor.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from dataclasses import dataclass

import numpy as np

from ..errors import Cancelled, InputError
from ..io.outputs import BLOCK
from .multidevice import Part, PartJob, run_rows

POLL_S = 0.2
DEFAULT_BLOCK = 4096  # --block-size: a block holds about this squared pixels, in whole rows


@dataclass
class Cluster:
    """Where and how a raster's blocks run: a distributed.Client, the folder that keeps finished blocks,
    the block size, and the torch threads of a worker (0: torch's own choice, a worker per machine)."""

    client: object
    spool: str
    block_size: int = DEFAULT_BLOCK
    threads: int = 0
    device: str = "auto"  # on each worker: its GPU where it has one
    network: object = None  # the network already scattered to the workers (a Future), for many rasters


MIN_TILES = 4  # a block is at least this many tiles tall: each block also runs the strip of windows above it


def plan_blocks(height: int, width: int, block_size: int, tile: int = 0, device: str = "auto",
                threads: int = 0) -> list[Part]:
    """Blocks of whole rows holding about block_size² pixels, and at least MIN_TILES tiles tall (measured:
    blocks one tile tall ran 2.7x as long as one process), starting on output block rows (so every GeoTIFF
    block is written once); one block for a raster no larger than that."""
    if block_size < BLOCK:
        raise InputError(f"The block size must be at least {BLOCK} pixels.")
    least = -(-MIN_TILES * tile // BLOCK) * BLOCK
    rows = max(BLOCK, least, round(block_size * block_size / max(width, 1) / BLOCK) * BLOCK)
    starts = list(range(0, height, rows))
    return [Part(device, (a, min(a + rows, height)), threads) for a in starts]


def job_key(job: PartJob, parts: list[Part]) -> str:
    """What makes two runs' blocks interchangeable: the input file as it is now, the network's weights,
    and every setting that changes a block's rows."""
    digest = hashlib.sha256()
    add_input(digest, job.input_path)
    digest.update(repr((dataclasses.replace(job, network=None), [p.rows for p in parts])).encode())
    add_weights(digest, job.network)
    return digest.hexdigest()[:24]


def add_input(digest, path: str) -> None:
    """Feed an input raster as it is now to a digest: its path and, for a local file, its size and time."""
    stat = os.stat(path) if os.path.exists(path) else None
    digest.update(repr((os.path.abspath(path) if stat else path, stat and (stat.st_size, stat.st_mtime_ns))).encode())


def add_weights(digest, network) -> None:
    """Feed a network's weights to a hashlib digest: two runs with equal digests used the same model."""
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())


class Spool:
    """The finished blocks of one job: rows_<first>_<end>.npy, a sequence of np.save records (no pickle)."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def path(self, part: Part) -> str:
        return os.path.join(self.folder, f"rows_{part.rows[0]}_{part.rows[1]}.npy")

    def done(self, part: Part) -> bool:
        return os.path.exists(self.path(part))

    def save(self, part: Part, chunks) -> None:
        tmp = self.path(part) + ".part"
        with open(tmp, "wb") as fh:
            for row0, arrays in chunks:
                np.save(fh, np.array([row0, len(arrays)], np.int64))
                for a in arrays:
                    np.save(fh, a, allow_pickle=False)
        os.replace(tmp, self.path(part))

    def load(self, part: Part):
        """(row0, arrays) of a finished block, one block row at a time."""
        with open(self.path(part), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            while fh.tell() < size:
                row0, n = np.load(fh, allow_pickle=False)
                yield int(row0), [np.load(fh, allow_pickle=False) for _ in range(int(n))]

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def run_blocks(job: PartJob, parts: list[Part], write, progress, cancel, log, cluster: Cluster) -> Spool:
    """Run the blocks not yet in the spool on the cluster and hand every block row to write(row0, arrays)
    here, a block as soon as it is in (kept in the spool first), while the others run. Returns the spool,
    for the caller to clear once its outputs are in place. Raises Cancelled, InputError (a block's own),
    or RuntimeError."""
    from distributed import wait

    client = cluster.client
    spool = Spool(os.path.join(cluster.spool, job_key(job, parts)))
    todo = [p for p in parts if not spool.done(p)]
    log(f"{len(parts)} block(s) of rows on the Dask cluster at {client.scheduler.address} (dashboard "
        f"{client.dashboard_link}); {len(parts) - len(todo)} already done, kept in {spool.folder}.")
    pending = {}
    if todo:
        # a key of its own each time: rescattering equal data under the hash key it had before, while the
        # workers still release it, left two workers gathering from each other for minutes
        network = cluster.network or client.scatter(job.network, broadcast=True, hash=False)
        light = dataclasses.replace(job, network=None)
        pending = {client.submit(_block, light, part, network, pure=False): part for part in todo}
    done = 0

    def finished(part):
        nonlocal done
        for row0, arrays in spool.load(part):
            write(row0, arrays)
        done += 1
        progress(done / len(parts))

    try:
        for part in parts:
            if part not in todo:
                finished(part)
        while pending:
            if cancel():
                raise Cancelled("Cancelled; no output was written.")
            try:
                ready = wait(list(pending), timeout=POLL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                continue
            for future in ready:
                part = pending.pop(future)
                if future.status == "error":
                    exc = future.exception()
                    if isinstance(exc, InputError):
                        raise InputError(str(exc))
                    raise RuntimeError(f"The block of rows {part.rows[0]}-{part.rows[1]} failed: "
                                       f"{type(exc).__name__}: {exc}")
                spool.save(part, future.result())
                future.release()
                finished(part)
    except BaseException:
        for future in pending:
            future.cancel()
        raise
    return spool


_PREDICTORS: dict = {}  # a worker's predictors, built once for the network it was sent


def _worker_device(device: str) -> str:
    """auto on a machine with several GPUs and several local workers (LocalCluster names them 0, 1...): a GPU
    each, in turn. dask-cuda gives each worker one visible GPU, and a worker per machine sees its own."""
    if device != "auto":
        return device
    from ..model.device import torch_or_error

    torch = torch_or_error()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return device
    return f"cuda:{name % count}" if isinstance(name, int) else device


def _block(job: PartJob, part: Part, network) -> list:
    """A task: the block's finished rows, (row0, arrays) a block row."""
    from ..model.device import choose_precision, resolve_device

    device = resolve_device(_worker_device(part.device))
    if job.precision == "auto":  # this worker's choice for its device (int8 is compiled only where asked for)
        job = dataclasses.replace(job, precision=choose_precision(device, "auto", int8_pays=False))
    chunks = []
    run_rows(job, dataclasses.replace(part, device=str(device)),
             lambda row0, arrays: chunks.append((row0, [a.copy() for a in arrays])), lambda f: None,
             lambda: False, network=network, predictors=_PREDICTORS)
    return chunks
