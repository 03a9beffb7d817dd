"""Data-parallel training with torch.distributed, launched by torchrun.

``torchrun --nproc_per_node=N train.py ...`` starts N processes with RANK / WORLD_SIZE / LOCAL_RANK
(and MASTER_ADDR / MASTER_PORT) in their environment. :func:`init_from_env` reads them, picks the
backend (nccl when the device is CUDA, gloo on CPU), binds each process to GPU LOCAL_RANK and returns
a :class:`DistContext`, the one object the trainer talks to for collectives. Without torchrun
(WORLD_SIZE absent or 1) it returns None and nothing distributed is initialised: single-process
training has no distributed code path at all.

Timeouts: a collective of the training loop (the per-update all-reduces, the dev sums) that waits
longer than ``--dist-timeout-minutes`` (default :data:`DEFAULT_TIMEOUT_MINUTES`) for a stopped, hung or
far slower rank fails, and :meth:`DistContext.failure` makes that one ``error:`` line. The waits for
rank 0's own work (data preparation, dev BLEU, checkpoint writes, the length-penalty choice:
:meth:`DistContext.wait_for_rank0`) are not bounded by the update, and use a process group of their own
(same backend) with :data:`RANK0_WORK_TIMEOUT_MINUTES`.

How the data is split (:func:`shard_batches`): every rank owns a FIXED disjoint share of the
training pairs (a seeded random 1/N of them, the same for every epoch) and length-buckets and
shuffles only its own share each epoch, with the same (seed, epoch) generator on every rank; the
batch lists are then cut to the shortest rank's length, so every rank makes the same number of
updates. Pairs, not batches, are sharded so that a rank only ever sees its own pairs: the stage-1
encoder-output cache (nmt/train/encoder_cache.py) then holds only that rank's pairs (1/N of the memory),
instead of every rank caching the whole corpus because reshuffled batches move between ranks.
A global update is the union of the N ranks' batches of that step.

>>> import numpy as np
>>> src, tgt = np.full(20, 5), np.full(20, 5)
>>> a = shard_batches(src, tgt, max_sentences=4, seed=1, epoch=0, num_shards=2, shard=0)
>>> b = shard_batches(src, tgt, max_sentences=4, seed=1, epoch=0, num_shards=2, shard=1)
>>> len(a) == len(b) == 3, sorted(np.concatenate(a + b).tolist()) == list(range(20))
(True, True)
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch

from nmt.data.binarized import make_batches
from nmt.errors import DistributedError
from nmt.train.evaluation import Totals

DEFAULT_TIMEOUT_MINUTES = 5.0           # the training collectives: an update takes seconds, not minutes
RANK0_WORK_TIMEOUT_MINUTES = 24 * 60.0  # waits for rank 0 alone: a CPU length-penalty choice can take an hour


def launched_by_torchrun(environ=None) -> bool:
    """True when the environment describes a world of more than one process."""
    environ = os.environ if environ is None else environ
    return int(environ.get("WORLD_SIZE", "1") or 1) > 1


@dataclass
class DistContext:
    """This process's place in the job and the collectives the trainer needs (all over the default group)."""
    rank: int                   # global rank, 0 .. world_size - 1
    local_rank: int             # rank on this machine (the GPU it uses)
    world_size: int
    backend: str                # "nccl" | "gloo"
    device: torch.device        # where this rank trains
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES   # of the training collectives
    rank0_group: object = None  # the group with RANK0_WORK_TIMEOUT_MINUTES (wait_for_rank0); None: the default

    @property
    def master_process(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sums over ranks of a few numbers (float64 on the backend's device), identical on every rank."""
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        dist.broadcast(t, src=0)            # bit-identical everywhere, whatever the reduction order
        return t.tolist()

    def reduce_totals(self, totals: Totals) -> Totals:
        """Loss and token sums over all ranks (the same on every rank)."""
        loss, nll, tokens, sentences = self.all_reduce_sum([totals.loss, totals.nll, totals.tokens, totals.sentences])
        return Totals(loss, nll, int(round(tokens)), int(round(sentences)))

    @property
    def comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        import torch.distributed as dist
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def wait_for_rank0(self) -> None:
        """A barrier after work rank 0 does alone (writing files, dev BLEU, the length-penalty choice):
        the others wait up to RANK0_WORK_TIMEOUT_MINUTES, not the training collectives' timeout."""
        import torch.distributed as dist
        if self.backend == "nccl":
            dist.barrier(group=self.rank0_group, device_ids=[self.device.index])
        else:
            dist.barrier(group=self.rank0_group)

    @contextlib.contextmanager
    def rank0_first(self):
        """Rank 0 runs the block first (it may write shared files: demo data, converted BERT), then the others."""
        if not self.master_process:
            self.wait_for_rank0()
        yield
        if self.master_process:
            self.wait_for_rank0()

    def failure(self, e: BaseException) -> DistributedError | None:
        """A collective that failed because of another rank, as one line: no answer within the timeout
        (a stopped, hung or far slower rank), or a rank that ended (its own error is above); None for
        anything else (a bug keeps its traceback). gloo raises a RuntimeError naming the cause."""
        if not isinstance(e, RuntimeError):
            return None
        text = str(e).lower()
        if "timed out" in text or "timeout" in text:
            return DistributedError(
                f"no answer from the other processes within {self.timeout_minutes:g} minutes "
                f"(--dist-timeout-minutes): a rank is stopped (SIGSTOP, Ctrl-Z), hung or far slower; "
                f"checkpoint_last.pt holds the last save: continue with --resume, with a larger timeout if "
                f"the ranks are just uneven")
        if "connection closed" in text or "connection reset" in text or "broken pipe" in text:
            return DistributedError("another process of the job ended (its own message is above); "
                                    "checkpoint_last.pt holds the last save: continue with --resume")
        return None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel over the parameters that require grad NOW (so: after set_stage).

        Buffers (sinusoidal position tables) are constants: no per-step broadcast of them.
        """
        import inspect

        from torch.nn.parallel import DistributedDataParallel
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in \
            inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers"   # renamed in torch 2.13
        return DistributedDataParallel(model, device_ids=device_ids, **{no_sync: False})

    def destroy(self) -> None:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def exit_worker(status: int) -> NoReturn:
    """End a torchrun worker with ``status`` now: flush stdout/stderr, then ``os._exit`` (no interpreter shutdown).

    Why: once DistributedDataParallel has been used, torch 2.13 keeps the gloo process group and its
    worker threads alive past ``destroy_process_group()``. A worker thread that frees a finished
    collective (an all_gather of Python-made tensors) while the interpreter is shutting down must take
    the GIL, cannot, and the process aborts: "terminate called without an active exception", SIGABRT.
    Skipping the shutdown removes the race (docs/notes/distributed-investigation.md has the backtrace and the counts).
    Call it only after every file is closed and the process group is destroyed.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def init_from_env(device: str = "auto", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES,
                  environ=None) -> DistContext | None:
    """Join the torchrun job described by the environment; None for a single process.

    ``device`` is train.py's --device: "auto" or "cuda" -> GPU LOCAL_RANK (nccl) when CUDA is
    available, "cpu" -> gloo; "cuda:N" is refused (torchrun assigns the GPUs). ``timeout_minutes``:
    train.py's --dist-timeout-minutes, how long a training collective waits for a silent rank.
    """
    environ = os.environ if environ is None else environ
    if not launched_by_torchrun(environ):
        return None
    try:
        rank, world_size = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local_rank = int(environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as e:
        raise DistributedError(f"WORLD_SIZE={environ.get('WORLD_SIZE')} but RANK/LOCAL_RANK are missing or not "
                               f"integers ({e}); launch with torchrun --nproc_per_node=N train.py ...") from None
    if not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    if not 0 < timeout_minutes < float("inf"):
        raise DistributedError(f"--dist-timeout-minutes {timeout_minutes}: must be a positive number of minutes")
    if device.startswith("cuda:"):
        raise DistributedError(f"--device {device}: under torchrun each process uses GPU LOCAL_RANK; "
                               f"pass --device cuda (or auto)")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise DistributedError("--device cuda: CUDA is not available on this machine; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPUs; "
                                   f"use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    import torch.distributed as dist
    kwargs = {"device_id": dev} if backend == "nccl" else {}
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
    patient = dist.new_group(backend=backend, timeout=datetime.timedelta(minutes=RANK0_WORK_TIMEOUT_MINUTES))
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, backend=backend, device=dev,
                       timeout_minutes=timeout_minutes, rank0_group=patient)


# ----------------------------------------------------------------------------------------------
# data sharding: pure functions, no process group needed (tests and the 1-process reference use them)

def shard_pairs(num_pairs: int, num_shards: int, shard: int, seed: int) -> np.ndarray:
    """The sorted pair indices rank ``shard`` owns for the whole run: a seeded random 1/num_shards.

    >>> shard_pairs(5, 2, 0, seed=1).tolist(), shard_pairs(5, 2, 1, seed=1).tolist()
    ([0, 2, 3], [1, 4])
    """
    perm = np.random.default_rng([seed, 0x5EED]).permutation(num_pairs)
    return np.sort(perm[shard::num_shards])


def shard_batches(src_lengths, tgt_lengths, *, max_sentences: int, max_tokens: int | None = None, seed: int,
                  epoch: int, num_shards: int = 1, shard: int = 0) -> list[np.ndarray]:
    """Rank ``shard``'s batches (global pair indices) for an epoch; all ranks get the same count.

    One shard: exactly :func:`nmt.data.binarized.make_batches`. Otherwise each shard's own pairs are bucketed
    and shuffled with the (seed, epoch) generator, and every list is cut to the shortest one (the
    counts of the other shards are computed here too, so no communication is needed; the cut drops
    the last batches of the shuffled order, a different random few each epoch).
    """
    src, tgt = np.asarray(src_lengths), np.asarray(tgt_lengths)
    if num_shards == 1:
        return make_batches(src, tgt, max_sentences=max_sentences, max_tokens=max_tokens, seed=seed, epoch=epoch)
    per_shard = []
    for k in range(num_shards):
        pairs = shard_pairs(len(src), num_shards, k, seed)
        local = make_batches(src[pairs], tgt[pairs], max_sentences=max_sentences, max_tokens=max_tokens,
                             seed=seed, epoch=epoch)
        per_shard.append([pairs[b] for b in local])
    count = min(len(b) for b in per_shard)
    return per_shard[shard][:count]


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A torch seed per (run seed, rank, update): ranks draw different dropout masks, and a resumed
    run does not replay the masks of its start.

    >>> rank_seed(1, 0, 0) != rank_seed(1, 1, 0) != rank_seed(1, 1, 5)
    True
    """
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0] >> 1)
