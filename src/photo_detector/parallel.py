"""Training on several GPUs: one process per GPU under DistributedDataParallel, launched by `run_train`.

The rule that keeps results comparable: `data.batch_size` is the *global* batch and `train.learning_rate`
belongs to it. Each of N processes trains on its 1/N slice of every global batch, and everything random is
drawn for the whole global batch and then sliced (augmentation, JPEG re-compression, dropout). BatchNorm
statistics are taken over the global batch. So N processes compute the same step as one process on the same
batch, within float tolerance, and changing `train.gpus` changes speed, not the model.

On the CPU (tests, debugging) the processes talk over gloo; torch's SyncBatchNorm refuses non-GPU tensors, so
the CPU path synchronises BatchNorm with the same arithmetic in plain ops (`sync_batchnorm`).
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from photo_detector.errors import PhotoDetectorError
from photo_detector.procs import die_with_parent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` training processes; Shard() is the single-process case."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where collectives put their tensors: NCCL takes only CUDA tensors
    local_rank: int = 0  # this process's GPU on its machine (rank = node * processes per node + local_rank)

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, logs, metrics and the export: exactly one set of artifacts."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def rows(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of `n` (n is a multiple of world)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (train loss and accuracy counts)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank: decisions from clocks (the time budget) must not differ between
        processes, or one would leave the loop while the others wait for it in a collective."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def gather(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate each rank's `chunk(n)` rows back into all `n` rows, in order, on every rank."""
        if not self.distributed:
            return part
        per = -(-n // self.world)
        padded = torch.zeros((per, *part.shape[1:]), dtype=part.dtype, device=self.device)
        padded[:part.shape[0]] = part
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat(parts)[:n].cpu()

    def chunk(self, n: int) -> slice:
        """This rank's part of `n` evaluation rows (the last rank may get fewer)."""
        per = -(-n // self.world)
        return slice(min(n, self.rank * per), min(n, (self.rank + 1) * per))


class ShardDropout(nn.Module):
    """Dropout whose mask is drawn for the whole global batch from its own generator and then sliced, so a
    sample is dropped the same way whichever process trains it. Identity in eval mode (nothing to export)."""

    def __init__(self, p: float, generator: torch.Generator, shard: Shard) -> None:
        super().__init__()
        self.p, self.gen, self.shard = p, generator, shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.shape[0] * self.shard.world
        keep = torch.rand((n, *x.shape[1:]), generator=self.gen, device=self.gen.device) >= self.p
        return x * keep[self.shard.rows(n)].to(x.dtype) / (1 - self.p)


# ---------------------------------------------------------------------------------------------------------
# BatchNorm over the global batch


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with a gradient: each rank's input reaches every rank's output, so the backward sums
    the output gradients over ranks. (torch.distributed.nn's equivalent is deprecated without a replacement
    that has a gradient.)"""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad.contiguous())


def _global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BatchNorm with statistics over every rank's rows: one differentiable all-reduce of the
    per-channel sums of (x - s) and (x - s)^2, shifted by the running mean s (equal on all ranks) so that
    E[d^2] - E[d]^2 does not cancel catastrophically. The all-reduce's backward sums the gradients of the
    statistics over ranks, which with DDP's gradient averaging gives the global batch's exact gradient."""
    c = x.shape[1]
    shape = (1, c) + (1,) * (x.ndim - 2)
    dims = [0, *range(2, x.ndim)]
    xf = x.float()
    assert bn.running_mean is not None and bn.running_var is not None  # track_running_stats is on for ours
    shift = bn.running_mean.detach().clone().float()
    d = xf - shift.view(shape)
    stats = _SumOverRanks.apply(torch.cat([d.sum(dims), (d * d).sum(dims)]))
    count = x.numel() // c * dist.get_world_size()
    mean_d = stats[:c] / count
    var = (stats[c:] / count - mean_d * mean_d).clamp_min(0)
    mean = mean_d + shift
    y = (xf - mean.view(shape)) * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)  # type: ignore[arg-type]
        bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
        bn.running_var.mul_(1 - m).add_(var.detach() * (count / max(1, count - 1)), alpha=m)
    return y.to(x.dtype)


_SYNCED: dict[type, type] = {}


def _synced_class(cls: type) -> type:
    """A subclass of a BatchNorm class whose training forward uses global statistics; eval is unchanged.
    timm's BatchNormAct2d also applies its dropout and activation after the norm."""
    if cls not in _SYNCED:
        def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
            if not (self.training and self.track_running_stats and dist.is_initialized()):
                return cls.forward(self, x)
            y = _global_batch_norm(self, x)
            if hasattr(self, "act"):
                y = self.act(self.drop(y))
            return y

        _SYNCED[cls] = type(f"Global{cls.__name__}", (cls,), {"forward": forward})
    return _SYNCED[cls]


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm normalise over the global batch. On CUDA: torch's SyncBatchNorm kernels (through
    timm's converter, which knows timm's BatchNorm+activation layers). On the CPU, where SyncBatchNorm refuses
    to run: the same arithmetic in plain ops. Parameters, buffers and state-dict keys stay as they were."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.__class__ = _synced_class(type(m))
    return model


def data_parallel(model: nn.Module, device: torch.device, shard: Shard) -> nn.Module:
    """What a training step calls: the model itself in one process; with several, the model with global
    BatchNorm (changed in place) wrapped in DDP, which averages gradients over processes in the backward pass.
    Checkpoints, validation and export use the model itself, whose state-dict keys stay the same."""
    if not shard.distributed:
        return model
    sync_batchnorm(model, device)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False)  # BatchNorm buffers stay equal on every rank: global statistics


# ---------------------------------------------------------------------------------------------------------
# Several machines: where this one sits in the job

CLUSTER_SPEC = "CLUSTER_SPEC"
DEFAULT_PORT = 2222  # the port CLUSTER_SPEC lists for every replica, open between the job's machines


@dataclass(frozen=True)
class Node:
    """This machine's place among `nodes` (Node() on one machine) and where process 0 listens."""

    rank: int = 0
    nodes: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0: a free local port (one machine)


def rendezvous(nodes: int, environ: dict[str, str] | None = None) -> Node:
    """The machine's place in a `nodes`-machine job, from what Vertex AI sets on every replica.

    The rule: MASTER_ADDR, MASTER_PORT and RANK (this machine's index; WORLD_SIZE machines), when all set,
    as Vertex sets them for PyTorch jobs; else CLUSTER_SPEC: workerpool0 holds the primary replica (machine
    0, whose address and port are the rendezvous) and workerpool1 the others (machine 1 + task.index).
    train.nodes must equal the job's replica count: a mismatch would hang in the rendezvous, so it is an
    error here. One machine (nodes=1) ignores the environment: a plain task on Vertex sets CLUSTER_SPEC too.
    """
    import json

    env = os.environ if environ is None else environ
    if nodes == 1:
        return Node()
    how = ("train.nodes > 1 runs only as a multi-replica Vertex AI CustomJob (the pipeline compiled with "
           "train.nodes), or with MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE set on every machine")
    if all(k in env for k in ("MASTER_ADDR", "MASTER_PORT", "RANK")):
        found = int(env.get("WORLD_SIZE", nodes))
        node = Node(int(env["RANK"]), found, env["MASTER_ADDR"], int(env["MASTER_PORT"]))
        source = "MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE"
    elif env.get(CLUSTER_SPEC):
        try:
            spec = json.loads(env[CLUSTER_SPEC])
            cluster, task = spec["cluster"], spec["task"]
            primary, workers = cluster["workerpool0"], cluster.get("workerpool1", [])
            rank = 0 if task["type"] == "workerpool0" else 1 + int(task["index"])
            if task["type"] not in ("workerpool0", "workerpool1"):
                raise ValueError(f"task type {task['type']!r} is neither workerpool0 nor workerpool1")
            host, _, port = primary[0].rpartition(":")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise PhotoDetectorError(f"the {CLUSTER_SPEC} environment variable is not a Vertex AI cluster spec: "
                                     f"{exc}", how) from None
        found = len(primary) + len(workers)
        node = Node(rank, found, host or primary[0], int(port) if port else DEFAULT_PORT)
        source = CLUSTER_SPEC
    else:
        raise PhotoDetectorError(f"config key 'train.nodes' is {nodes} but this machine has no cluster spec", how)
    if found != nodes or not 0 <= node.rank < nodes:
        raise PhotoDetectorError(f"config key 'train.nodes' is {nodes} but {source} describes {found} machine(s) "
                                 f"(this one: {node.rank})", "compile the pipeline with the same train.nodes "
                                 "the job runs with")
    log.info("machine %d of %d; rendezvous at %s:%d (from %s)", node.rank, nodes, node.master_addr,
             node.master_port, source)
    return node


# ---------------------------------------------------------------------------------------------------------
# Launching one process per device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(local: int, per_node: int, node: Node, backend: str, log_level: int, target: Callable[..., Any],
            args: tuple[Any, ...], results: Any, parent: int) -> None:
    """One training process: join the group, run `target(*args, shard)`, report the result or the error."""
    die_with_parent(parent)
    rank, world = node.rank * per_node + local, node.nodes * per_node
    logging.basicConfig(level=log_level if rank == 0 else max(log_level, logging.WARNING),
                        format=f"%(asctime)s %(levelname)s %(name)s [rank {rank}]: %(message)s", stream=sys.stderr)
    from photo_detector.io import usable_cores

    torch.set_num_threads(max(1, usable_cores() // per_node))
    if backend == "nccl":
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, init_method=f"tcp://{node.master_addr}:{node.master_port}", rank=rank,
                                world_size=world, timeout=timedelta(minutes=30))
        result = target(*args, Shard(rank, world, f"cuda:{local}" if backend == "nccl" else "cpu", local))
        # Plain pickle, by value: the queue's own pickler would pass tensors as shared-memory handles that
        # die with this process.
        results.put((local, "ok", pickle.dumps(result if rank == 0 else None)))
    except BaseException as exc:
        try:
            payload = pickle.dumps(exc)
            pickle.loads(payload)
        except Exception:  # an exception that cannot cross the process boundary: keep its text
            payload = pickle.dumps(PhotoDetectorError(f"training process {rank} failed: {type(exc).__name__}: "
                                                      f"{exc}"))
        if not isinstance(exc, PhotoDetectorError):
            traceback.print_exc()
        results.put((local, "error", payload))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(target: Callable[..., Any], args: tuple[Any, ...], world: int, backend: str,
           node: Node | None = None) -> Any:
    """Run `target(*args, shard)` in `world` spawned processes on this machine and return rank 0's result
    (None on a machine other than the first of `node.nodes`, which runs ranks node.rank * world + i). The
    first failure stops every process here (a survivor would wait in a collective forever; the other
    machines' processes fail in theirs) and is re-raised as it was raised there. Spawned, not forked: CUDA
    cannot be used in a forked child once the parent touched it."""
    import multiprocessing as mp

    node = node or Node()
    if not node.master_port:
        node = Node(node.rank, node.nodes, node.master_addr, _free_port())
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    level = logging.getLogger().getEffectiveLevel()
    log.info("starting %d training processes (%s backend)%s", world, backend,
             f" on machine {node.rank} of {node.nodes}" if node.nodes > 1 else "")
    procs = [ctx.Process(target=_worker, args=(r, world, node, backend, level, target, args, results, os.getpid()),
                         name=f"photo-detector-train-{r}") for r in range(world)]
    for p in procs:
        p.start()
    outcome: Any = None
    done: set[int] = set()
    try:
        while len(done) < world:
            try:
                rank, status, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if r not in done and p.exitcode is not None]
                if dead:  # killed from outside (OOM killer, a signal) before it could report
                    raise PhotoDetectorError(
                        f"training process {dead[0]} exited with code {procs[dead[0]].exitcode} without a "
                        "result", "see its log above; on GPUs, check memory (lower data.batch_size)") from None
                continue
            done.add(rank)
            if status == "error":
                raise pickle.loads(payload)
            if rank == 0 and node.rank == 0:
                outcome = pickle.loads(payload)
    finally:
        for p in procs:  # after a failure the others may wait in a collective: stop them
            p.join(timeout=10 if len(done) == world else 0)
            if p.is_alive():
                p.terminate()
                p.join()
    return outcome


def check_world(world: int, device: torch.device, batch_size: int, nodes: int = 1) -> None:
    """Fail before spawning anything when the request cannot work (`world` processes on each of `nodes`)."""
    if device.type == "cuda" and torch.cuda.device_count() < world:
        raise PhotoDetectorError(
            f"config key 'train.gpus' is {world} but {torch.cuda.device_count()} GPU(s) are visible",
            "attach that many GPUs (the pipeline parameter gpus sets the train task's count) or lower train.gpus")
    if batch_size % (world * nodes):
        raise PhotoDetectorError(
            f"config key 'data.batch_size' ({batch_size}) is not a multiple of train.gpus ({world})"
            + (f" x train.nodes ({nodes})" if nodes > 1 else ""),
            "data.batch_size is the global batch, split evenly over the GPUs: pick a multiple of train.gpus"
            + (" x train.nodes" if nodes > 1 else ""))
    if device.type == "cuda":
        from photo_detector.io import usable_cores

        if usable_cores() < 2 * world:  # each process needs a core to keep its GPU fed
            log.warning("%d GPUs on a machine with %d CPU(s): the GPUs may wait on the CPU. On Vertex, set the "
                        "train_cpu and train_memory parameters with gpus (submit --param gpus=N sets them)",
                        world, usable_cores())
    if device.type == "cpu":
        log.info("train.gpus=%d on the CPU: %d gloo processes (exercises the multi-GPU path; not faster than "
                 "one process)", world, world)
