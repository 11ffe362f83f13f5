"""One raster's rows on a Dask cluster: blocks of whole rows run as tasks, each exactly as that part of a
run on one machine (multidevice.run_rows: the strip of windows above it, the whole image's batches), so
the class raster is the one-machine run's, every pixel.

A block's finished rows come back to this process and are kept in a spool folder (one file a block,
written under a temporary name and renamed when whole): a rerun of the same job skips the blocks found
there, and only this process writes the outputs, from the spool. A worker that dies has its blocks run
again by Dask, and so does the network: it reaches the workers as the result of a task Dask can run again
(network_task), not as scattered data, which is lost with the last worker holding it. Workers need only
the input (a path they can open: shared storage, /vsis3/, /vsicurl/) and this package; each keeps its
predictor.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..errors import Cancelled, InputError
from ..io.outputs import BLOCK
from .multidevice import Part, PartJob, run_rows
from .spool import Spool, job_key

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
    network: object = None  # the network's task (a Future, network_task) shared by many rasters


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


BLOCK_RETRIES = 2  # a block whose task raised runs again this many times before the run reports it
NO_WORKER_TIMEOUT_S = 120.0  # a run whose cluster has had no worker this long ends, its finished blocks kept
WORKERS_CHECK_S = 2.0


def network_task(client, network):
    """The network as the result of a task Dask can run again, for the blocks to depend on. Scattered data
    has no recipe: once the last worker holding it died, every block needing it was cancelled and the run
    ended. A key of its own each time: rescattering equal data under the key it had before, while the
    workers still released it, once left two workers gathering from each other for minutes."""
    import uuid

    import dask

    # the network travels in the task itself (the scheduler keeps it, to run the task again): no warning
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "4GB"}):
        return client.submit(_network, network, key=f"landcover-network-{uuid.uuid4().hex}", pure=False)


def _network(network):
    return network


def run_blocks(job: PartJob, parts: list[Part], write, progress, cancel, log, cluster: Cluster) -> tuple[Spool, dict]:
    """Run the blocks not yet in the spool on the cluster and hand every block row to write(row0, arrays)
    here, a block as soon as it is in (kept in the spool first), while the others run. A block whose worker
    is lost runs again on another (Dask's allowed failures), one whose task raises runs again BLOCK_RETRIES
    times. Returns the spool, for the caller to clear once its outputs are in place, and how many blocks ran
    again ({"worker lost": n, "error": n}). Raises Cancelled,
    InputError (a block's own), or RuntimeError (a block that kept failing, a cluster left with no worker);
    the finished blocks stay in the spool, and the same call again resumes from them."""
    client = cluster.client
    spool = Spool(os.path.join(cluster.spool, job_key(job, parts)))
    todo = [p for p in parts if not spool.done(p)]
    log(f"{len(parts)} block(s) of rows on the Dask cluster at {client.scheduler.address} (dashboard "
        f"{client.dashboard_link}); {len(parts) - len(todo)} already done, kept in {spool.folder}.")
    blocks = _Blocks(spool, parts, write, progress, log)
    for part in parts:
        if part not in todo:
            blocks.finished(part)
    if todo:
        network = cluster.network or network_task(client, job.network)
        light = dataclasses.replace(job, network=None)
        pending = {client.submit(_block, light, part, network, pure=False, retries=BLOCK_RETRIES): part
                   for part in todo}
        blocks.wait(client, pending, cancel)
    return spool, {"worker lost": blocks.lost, "error": blocks.raised}


class _Blocks:
    """A run's blocks as they come in: kept in the spool, handed on, counted; and the blocks that ran again."""

    def __init__(self, spool: Spool, parts, write, progress, log):
        self.spool, self.parts, self.write, self.progress, self.log = spool, parts, write, progress, log
        self.done = 0
        self.lost = self.raised = 0  # runs again: after their worker was lost, after their task raised
        self.checked = 0.0  # when the scheduler was last asked for workers

    def finished(self, part: Part) -> None:
        for row0, arrays in self.spool.load(part):
            self.write(row0, arrays)
        self.done += 1
        self.progress(self.done / len(self.parts))

    def wait(self, client, pending: dict, cancel) -> None:
        from distributed import wait

        alone_since = None
        try:
            while pending:
                if cancel():
                    raise Cancelled("Cancelled; no output was written.")
                alone_since = self._check_workers(client, alone_since)
                try:
                    ready = wait(list(pending), timeout=POLL_S, return_when="FIRST_COMPLETED").done
                except TimeoutError:
                    continue
                for future in ready:
                    self._collect(client, future, pending.pop(future))
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        if self.lost or self.raised:
            self.log(f"{self.lost + self.raised} block run(s) again: {self.lost} after their worker was lost, "
                     f"{self.raised} after an error of their own.")

    def _collect(self, client, future, part: Part) -> None:
        lost, raised = _attempts(client, future.key)
        self.lost += lost
        self.raised += raised
        if future.status == "error":
            exc = future.exception()
            if isinstance(exc, InputError):
                raise InputError(str(exc))
            raise RuntimeError(f"The block of rows {part.rows[0]}-{part.rows[1]} failed after "
                               f"{1 + BLOCK_RETRIES} tries: {type(exc).__name__}: {exc}. {self._kept()}")
        self.spool.save(part, future.result())
        future.release()
        self.finished(part)

    def _check_workers(self, client, alone_since):
        """Since when the cluster has had no worker (None: it has one), asked of the scheduler every
        WORKERS_CHECK_S: the run ends once that has lasted NO_WORKER_TIMEOUT_S."""
        import time

        now = time.monotonic()
        if now - self.checked < WORKERS_CHECK_S:
            return alone_since
        self.checked = now
        if client.scheduler_info(n_workers=1).get("workers"):
            return None
        if alone_since is not None and now - alone_since > NO_WORKER_TIMEOUT_S:
            raise RuntimeError(f"The Dask cluster has had no worker for {NO_WORKER_TIMEOUT_S:.0f} s. {self._kept()}")
        return now if alone_since is None else alone_since

    def _kept(self) -> str:
        return (f"The {self.done} finished block(s) of {len(self.parts)} are kept in {self.spool.folder}: run the "
                f"same command again (with workers) to go on from them.")


def _attempts(client, key) -> tuple[int, int]:
    """How often a task ran again: after the worker it was on died, and after it raised; (0, 0) where the
    scheduler does not say."""
    def on_scheduler(dask_scheduler, key=key, retries=BLOCK_RETRIES):  # sent by value: no import there
        task = dask_scheduler.tasks.get(key)
        return (task.suspicious, retries - task.retries) if task is not None else (0, 0)

    try:
        return client.run_on_scheduler(on_scheduler)
    except Exception:  # noqa: BLE001 (a scheduler that runs no client code: the count is only reported)
        return 0, 0


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


WORKERS_TIMEOUT_S = 60  # how long a run waits for a cluster with no worker yet


def worker_hardware(client, device: str):
    """What every worker of the cluster has for `device` (precision.Hardware), asked of each: the run's one
    precision is decided from it, so that every block computes its rows alike."""
    from ..model.precision import Hardware

    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except TimeoutError:
        raise InputError(f"The Dask cluster at {client.scheduler.address} has had no worker for "
                         f"{WORKERS_TIMEOUT_S} s; start workers, then run again.") from None
    facts = client.run(_hardware_here, device)
    return Hardware.common([Hardware(*f) for f in facts.values()])


def _hardware_here(device: str) -> tuple:
    """A worker's (kind, bf16, int8, compiler) for `device`: what precision.Hardware holds."""
    from ..model.device import resolve_device
    from ..model.precision import Hardware

    h = Hardware.of(resolve_device(_worker_device(device)), ask_int8=True)
    return h.kind, h.bf16, h.int8, h.compiler


def _block(job: PartJob, part: Part, network) -> list:
    """A task: the block's finished rows, (row0, arrays) a block row, in the precision the run decided."""
    from ..model.device import resolve_device

    device = resolve_device(_worker_device(part.device))
    chunks = []
    run_rows(job, dataclasses.replace(part, device=str(device)),
             lambda row0, arrays: chunks.append((row0, [a.copy() for a in arrays])), lambda f: None,
             lambda: False, network=network, predictors=_PREDICTORS)
    return chunks
