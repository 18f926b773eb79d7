"""Communicators: how the ranks of a search job talk, behind one interface.

- `LocalComm`: one process owns every shard; no MPI needed (a laptop, a test, one GPU).
- `MpiComm`: mpi4py over host (NumPy) buffers; the CPU path.
- `NcclComm`: NCCL (through cupy.cuda.nccl) over device (CuPy) buffers, with MPI for the small
  control messages and to broadcast NCCL's unique id; the GPU path keeps arrays on the device.

Arrays move with `bcast_array`/`send_array`/`recv_array`/`allgather_rows`; small Python objects
(headers, plans, error messages) with the `*_obj` methods. `announce` is the broadcast a rank may
wait in for a long time (a service's idle followers): it waits without burning a core. `agree`
turns an error on any rank into the same error on every rank, so a collective never hangs on one
rank's bad input.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from hpcrag.errors import HpcragError

T = TypeVar("T")
MPI_LAUNCH_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE")
# How an `announce` waits: spin this long (a busy service's next header is usually this close), then
# sleep between polls, the sleep doubling up to the cap (the cap is the wake-up delay after idling).
ANNOUNCE_SPIN_S = 0.0005
ANNOUNCE_MAX_SLEEP_S = 0.002
ANNOUNCE_BYTES = 512  # a search header fits; a longer object sends its rest in a second broadcast


class Communicator(Protocol):
    rank: int
    size: int
    local_size: int  # ranks on this node
    xp: Any  # numpy or cupy: where this communicator's arrays live

    def bcast_obj(self, obj: Any) -> Any: ...
    def announce(self, obj: Any) -> Any: ...
    def gather_obj(self, obj: Any) -> list[Any] | None: ...
    def allgather_obj(self, obj: Any) -> list[Any]: ...
    def bcast_array(self, array: Any, shape: tuple[int, ...], dtype: Any) -> Any: ...
    def send_array(self, array: Any, dest: int) -> None: ...
    def recv_array(self, shape: tuple[int, ...], dtype: Any, source: int) -> Any: ...
    def allgather_rows(self, part: Any, bounds: np.ndarray) -> Any: ...
    def alltoallv(self, parts: list[np.ndarray]) -> list[np.ndarray]: ...
    def barrier(self) -> None: ...
    def abort(self, code: int) -> None: ...


class LocalComm:
    """A communicator of one: every collective is the identity."""

    rank = 0
    size = 1
    local_size = 1

    def __init__(self, xp: Any = np) -> None:
        self.xp = xp

    def bcast_obj(self, obj: Any) -> Any:
        return obj

    def announce(self, obj: Any) -> Any:
        return obj

    def gather_obj(self, obj: Any) -> list[Any]:
        return [obj]

    def allgather_obj(self, obj: Any) -> list[Any]:
        return [obj]

    def bcast_array(self, array: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        return array

    def send_array(self, array: Any, dest: int) -> None:
        raise HpcragError("a communicator of one rank has no peer to send to")

    def recv_array(self, shape: tuple[int, ...], dtype: Any, source: int) -> Any:
        raise HpcragError("a communicator of one rank has no peer to receive from")

    def allgather_rows(self, part: Any, bounds: np.ndarray) -> Any:
        return part

    def alltoallv(self, parts: list[np.ndarray]) -> list[np.ndarray]:
        return list(parts)

    def barrier(self) -> None:
        return None

    def abort(self, code: int) -> None:
        raise SystemExit(code)


class MpiComm:
    """mpi4py over host buffers; collectives on NumPy arrays use MPI's buffer interface (no pickling)."""

    xp = np

    def __init__(self, comm: Any = None) -> None:
        from mpi4py import MPI

        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    def bcast_obj(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def announce(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank; the others may wait long for it, so they poll and sleep.

        MPI's blocking calls spin (Open MPI polls at 100% of a core), so the object goes out in a
        nonblocking Ibcast of a fixed-size buffer that waiting ranks test and sleep on; an object
        larger than the buffer (a long error message) sends its rest in a plain Bcast.
        """
        room = ANNOUNCE_BYTES - 8
        buffer = np.zeros(ANNOUNCE_BYTES, dtype=np.uint8)
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == 0 else b""
        if self.rank == 0:
            head = len(payload).to_bytes(8, "little") + payload[:room]
            buffer[: len(head)] = np.frombuffer(head, dtype=np.uint8)
        request = self.comm.Ibcast(buffer, root=0)
        if self.rank == 0:
            request.Wait()
            if len(payload) > room:
                self.comm.Bcast(np.frombuffer(payload[room:], dtype=np.uint8).copy(), root=0)
            return obj
        _wait_idly(request)
        length = int.from_bytes(buffer[:8].tobytes(), "little")
        data = buffer[8 : 8 + min(length, room)].tobytes()
        if length > room:
            tail = np.empty(length - room, dtype=np.uint8)
            self.comm.Bcast(tail, root=0)
            data += tail.tobytes()
        return pickle.loads(data)

    def gather_obj(self, obj: Any) -> list[Any] | None:
        return self.comm.gather(obj, root=0)

    def allgather_obj(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def bcast_array(self, array: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        buffer = np.ascontiguousarray(array) if self.rank == 0 else np.empty(shape, dtype=dtype)
        self.comm.Bcast(buffer, root=0)
        return buffer

    def send_array(self, array: Any, dest: int) -> None:
        self.comm.Send(np.ascontiguousarray(array), dest=dest)

    def recv_array(self, shape: tuple[int, ...], dtype: Any, source: int) -> Any:
        buffer = np.empty(shape, dtype=dtype)
        self.comm.Recv(buffer, source=source)
        return buffer

    def allgather_rows(self, part: Any, bounds: np.ndarray) -> Any:
        """Every rank's rows, concatenated in rank order: rank r holds rows bounds[r]:bounds[r + 1]."""
        part = np.ascontiguousarray(part)
        row = int(np.prod(part.shape[1:], dtype=np.int64))
        rows = np.empty((int(bounds[-1]), *part.shape[1:]), dtype=part.dtype)
        self.comm.Allgatherv(part, [rows, (np.diff(bounds) * row, bounds[:-1] * row)])
        return rows

    def alltoallv(self, parts: list[np.ndarray]) -> list[np.ndarray]:
        """Send parts[r] to rank r; return what each rank sent here. Parts share dtype and row shape."""
        from mpi4py import MPI

        sample = parts[0]
        row_shape, dtype = sample.shape[1:], sample.dtype
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
        send_rows = np.array([len(p) for p in parts], dtype=np.int64)
        recv_rows = np.empty_like(send_rows)
        self.comm.Alltoall(send_rows, recv_rows)
        send = np.ascontiguousarray(np.concatenate(parts)).view(np.uint8).reshape(-1)
        recv = np.empty(int(recv_rows.sum()) * row_bytes, dtype=np.uint8)
        send_counts, recv_counts = send_rows * row_bytes, recv_rows * row_bytes
        if max(send_counts.sum(), recv_counts.sum()) >= 2**31:
            raise HpcragError("one exchange round exceeds 2 GiB; lower the build's --chunk-rows")
        send_displs = np.concatenate([[0], np.cumsum(send_counts)[:-1]])
        recv_displs = np.concatenate([[0], np.cumsum(recv_counts)[:-1]])
        self.comm.Alltoallv(
            [send, (send_counts, send_displs), MPI.BYTE], [recv, (recv_counts, recv_displs), MPI.BYTE]
        )
        rows = recv.view(dtype).reshape(-1, *row_shape)
        bounds = np.concatenate([[0], np.cumsum(recv_rows)])
        return [rows[bounds[r] : bounds[r + 1]] for r in range(self.size)]

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


class NcclComm(MpiComm):
    """NCCL for device arrays (CuPy), MPI for control; one GPU per rank (the node-local rank's)."""

    _DTYPES: ClassVar[dict[str, str]] = {
        "float32": "NCCL_FLOAT32",
        "float16": "NCCL_FLOAT16",
        "int64": "NCCL_INT64",
        "int32": "NCCL_INT32",
    }

    def __init__(self, comm: Any = None) -> None:
        super().__init__(comm)
        import cupy
        from cupy.cuda import nccl

        self.xp = cupy
        cupy.cuda.Device(self.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        self._nccl = nccl.NcclCommunicator(self.size, self.comm.bcast(uid, root=0), self.rank)
        self._nccl_module = nccl
        self._stream = cupy.cuda.Stream(non_blocking=True)

    def _dtype(self, dtype: Any) -> int:
        name = np.dtype(dtype).name
        if name not in self._DTYPES:
            raise HpcragError(f"NCCL transfer of {name} arrays is not supported here")
        return getattr(self._nccl_module, self._DTYPES[name])

    def bcast_array(self, array: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        cupy = self.xp
        buffer = cupy.ascontiguousarray(array) if self.rank == 0 else cupy.empty(shape, dtype=dtype)
        # The producer of `array` ran on the current stream: order NCCL's stream after it.
        self._stream.wait_event(cupy.cuda.get_current_stream().record())
        self._nccl.bcast(buffer.data.ptr, buffer.size, self._dtype(dtype), 0, self._stream.ptr)
        self._stream.synchronize()
        return buffer

    def send_array(self, array: Any, dest: int) -> None:
        cupy = self.xp
        buffer = cupy.ascontiguousarray(array)
        self._stream.wait_event(cupy.cuda.get_current_stream().record())
        self._nccl.send(buffer.data.ptr, buffer.size, self._dtype(buffer.dtype), dest, self._stream.ptr)
        self._stream.synchronize()

    def recv_array(self, shape: tuple[int, ...], dtype: Any, source: int) -> Any:
        buffer = self.xp.empty(shape, dtype=dtype)
        self._nccl.recv(buffer.data.ptr, buffer.size, self._dtype(dtype), source, self._stream.ptr)
        self._stream.synchronize()
        return buffer

    def allgather_rows(self, part: Any, bounds: np.ndarray) -> Any:
        # Through the host: NCCL's allGather wants equal parts, and what this gathers (routed probes)
        # is a few hundred kilobytes.
        return self.xp.asarray(super().allgather_rows(self.xp.asnumpy(part), bounds))


def _wait_idly(request: Any) -> None:
    """Complete an MPI request, spinning briefly and then sleeping between tests."""
    spin_until = time.perf_counter() + ANNOUNCE_SPIN_S
    while time.perf_counter() < spin_until:
        if request.Test():
            return
    sleep = 0.00005
    while not request.Test():
        time.sleep(sleep)
        sleep = min(sleep * 2, ANNOUNCE_MAX_SLEEP_S)


def row_bounds(rows: int, size: int) -> np.ndarray:
    """Bounds that split `rows` over `size` ranks as evenly as they go: rank r takes
    bounds[r]:bounds[r + 1]."""
    return np.array([rows * rank // size for rank in range(size + 1)], dtype=np.int64)


def launched_by_mpi() -> bool:
    """True under mpirun or `srun --mpi=pmix` (they set these variables), False for a plain process."""
    return any(name in os.environ for name in MPI_LAUNCH_VARIABLES)


def make_comm(kind: str = "auto", device: str = "cpu") -> Communicator:
    """`auto` picks MPI when an MPI launcher started us, else one local process; NCCL for `cuda`."""
    if kind not in ("auto", "mpi", "local"):
        raise HpcragError(f"unknown communicator {kind!r}; use auto, mpi or local")
    use_mpi = kind == "mpi" or (kind == "auto" and launched_by_mpi())
    if device == "cuda":
        from hpcrag.search.device import require_cupy

        cupy = require_cupy()
        return NcclComm() if use_mpi else LocalComm(cupy)
    return MpiComm() if use_mpi else LocalComm()


def agree(comm: Communicator, action: Callable[[], T]) -> T:
    """Run `action` on every rank; if it fails with an HpcragError on any rank, raise it on all."""
    failure: HpcragError | None = None
    result: Any = None
    try:
        result = action()
    except HpcragError as exc:
        failure = exc
    errors = [e for e in comm.allgather_obj(None if failure is None else str(failure)) if e is not None]
    if failure is not None:
        raise failure
    if errors:
        raise HpcragError(errors[0])
    return result


class RankFailures:
    """A collective call's local steps, run so that a failure on one rank reaches every rank.

    A rank that raised out of a collective call would leave the others waiting in its next
    collective. So each local step runs through `run`: after this rank's first failure the rest of
    its steps are skipped (their `fallback` result stands in, so the rank still joins every
    collective), and `check` (collective) raises on every rank an HpcragError naming the first rank
    that failed and why (an exception other than HpcragError also logs its traceback on the rank it
    came from). With one rank nothing is caught: an exception leaves as it came.
    """

    def __init__(self, comm: Communicator, what: str) -> None:
        self.comm = comm
        self.what = what
        self.failure: str | None = None

    def run(self, step: Callable[[], T], fallback: Callable[[], T]) -> T:
        """`step()`, or after a failure here `fallback()` (made only then: searches pay nothing)."""
        if self.comm.size == 1:
            return step()
        if self.failure is not None:
            return fallback()
        try:
            return step()
        except Exception as exc:  # whatever it is, the other ranks must hear of it rather than wait
            self.failure = str(exc) if isinstance(exc, HpcragError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, HpcragError):  # unexpected: its traceback goes to this rank's stderr
                logging.getLogger(__name__).exception("%s failed on rank %d", self.what, self.comm.rank)
            return fallback()

    def check(self, reported: list[str | None] | None = None) -> None:
        """Collective unless `reported` holds every rank's `failure`, gathered with other data."""
        if reported is None:
            reported = self.comm.allgather_obj(self.failure) if self.comm.size > 1 else [None]
        for rank, failure in enumerate(reported):
            if failure is not None:
                raise HpcragError(f"{self.what} failed on rank {rank} of {self.comm.size}: {failure}")
