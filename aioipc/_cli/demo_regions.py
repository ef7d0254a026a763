"""The shared-memory rows of ``aioipc demo``: a region of every kind plus semaphores.

Shared memory moves bytes but says nothing about when they are there, so each row is
the textbook bounded buffer: the region holds ``SLOTS`` slots each way, and each way has
two counting semaphores, "readable" (filled slots, starting at 0) and "writable" (free
slots, starting at ``SLOTS``). A sender waits for a writable slot, fills it and posts
readable; the receiver waits for a readable slot, copies it out and posts writable.
Semaphore operations are system calls, and so full memory barriers: the bytes a sender
wrote are visible to the receiver that its post woke.

Rows: ``sysv-shm`` (a SysV segment and a SysV semaphore set), ``posix-shm`` (POSIX shared
memory and four POSIX semaphores), ``mapped-file`` (an ordinary file mapped by both,
with a SysV set) and ``memfd`` (anonymous memory handed to the child as an inherited
fd, with a SysV set).
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import ObjectStream

from .. import AnonymousMemory, MappedFile, posix, sysv
from .._core.region import SharedMemoryRegion
from ..errors import MessageTooLargeError

__all__ = ["REGION_MECHANISMS", "region_child", "region_parent"]

REGION_MECHANISMS = ("sysv-shm", "posix-shm", "mapped-file", "memfd")
SLOTS = 16
MIN_SLOT = 64 * 1024
_LEN = struct.Struct("=I")


class _Signals:
    """Four counting semaphores: 2*way is "readable", 2*way + 1 "writable"."""

    def __init__(self, sysv_set: Any = None, posix_sems: list[Any] | None = None) -> None:
        self._set, self._sems = sysv_set, posix_sems

    async def aclose(self) -> None:
        for handle in self._sems if self._sems is not None else [self._set]:
            await handle.aclose()

    async def wait(self, index: int) -> None:
        if self._sems is not None:
            await self._sems[index].acquire()
        else:
            await self._set.op([(index, -1)])

    def post(self, index: int) -> None:
        if self._sems is not None:
            self._sems[index].release()
        else:
            self._set.op_nowait([(index, 1)])


class SlotChannel(ObjectStream[bytes]):
    """One side of a two-way bounded buffer in ``region`` (``side`` 0: the parent)."""

    def __init__(self, region: SharedMemoryRegion, signals: _Signals, slot: int, side: int) -> None:
        self._region, self._signals, self._slot = region, signals, slot
        self._side = side
        self._buf = region.buf
        self._out, self._in = side, 1 - side  # way 0 runs parent -> child
        self._next_out = self._next_in = 0

    def _offset(self, way: int, index: int) -> int:
        return (way * SLOTS + index) * self._slot

    async def send(self, item: bytes) -> None:
        if len(item) > self._slot - _LEN.size:
            raise MessageTooLargeError(len(item), self._slot - _LEN.size, "the demo's slot size")
        await self._signals.wait(2 * self._out + 1)
        at = self._offset(self._out, self._next_out)
        _LEN.pack_into(self._buf, at, len(item))
        self._buf[at + _LEN.size : at + _LEN.size + len(item)] = item
        self._next_out = (self._next_out + 1) % SLOTS
        self._signals.post(2 * self._out)

    async def receive(self) -> bytes:
        await self._signals.wait(2 * self._in)
        at = self._offset(self._in, self._next_in)
        (size,) = _LEN.unpack_from(self._buf, at)
        item = bytes(self._buf[at + _LEN.size : at + _LEN.size + size])
        self._next_in = (self._next_in + 1) % SLOTS
        self._signals.post(2 * self._in + 1)
        return item

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if self._region.closed:
            return
        self._buf.release()
        self._region.close()
        if self._side == 1:  # the parent's own handles are closed by region_parent
            await self._signals.aclose()
        await anyio.lowlevel.checkpoint()


def _size(slot: int) -> int:
    return 2 * SLOTS * slot


@asynccontextmanager
async def region_parent(
    mechanism: str, tmp: str, message_size: int
) -> AsyncIterator[tuple[SlotChannel, list[str], tuple[int, ...]]]:
    """The parent's side, the child's arguments, and the fds the child must inherit."""
    slot = max(MIN_SLOT, message_size + _LEN.size)
    slot = -(-slot // 8) * 8
    async with AsyncExitStack() as stack:
        fds: tuple[int, ...] = ()
        if mechanism == "posix-shm":
            base = f"/aioipc-demo-{os.getpid()}"
            region: SharedMemoryRegion = posix.SharedMemory.create(base, _size(slot))
            stack.callback(posix.unlink_shared_memory, base)
            sems = []
            for i in range(4):
                sem = posix.Semaphore.create(f"{base}-{i}", SLOTS if i % 2 else 0)
                stack.callback(posix.unlink_semaphore, sem.name)
                stack.push_async_callback(sem.aclose)
                sems.append(sem)
            signals = _Signals(posix_sems=sems)
            args = [base]
        else:
            # Not SEM_UNDO: these count slots, they are not locks held by a process.
            sem_set = sysv.SemaphoreSet.create(size=4, values=[0, SLOTS, 0, SLOTS], undo=False)
            stack.push_async_callback(sem_set.aclose)  # private: removed on close
            signals = _Signals(sysv_set=sem_set)
            if mechanism == "sysv-shm":
                segment = sysv.SharedMemory.create(sysv.IPC_PRIVATE, _size(slot))
                stack.callback(segment.remove)  # freed once both have detached
                region = segment
                args = [str(segment.id)]
            elif mechanism == "mapped-file":
                path = os.path.join(tmp, "mapped")
                region = MappedFile.open(path, _size(slot), create=True)
                args = [path]
            else:
                memory = AnonymousMemory.create(_size(slot))
                region, fds = memory, (memory.fd,)
                args = [str(memory.fd)]
            args.append(str(sem_set.id))
        chan = SlotChannel(region, signals, slot, 0)
        stack.push_async_callback(chan.aclose)
        yield chan, [*args, str(slot)], fds


def region_child(mechanism: str, args: list[str]) -> SlotChannel:
    """The child's side, from the arguments :func:`region_parent` gave."""
    slot = int(args[-1])
    region: SharedMemoryRegion
    if mechanism == "posix-shm":
        region = posix.SharedMemory.open(args[0])
        signals = _Signals(posix_sems=[posix.Semaphore.open(f"{args[0]}-{i}") for i in range(4)])
    else:
        signals = _Signals(sysv_set=sysv.SemaphoreSet.from_id(int(args[1]), undo=False))
        if mechanism == "sysv-shm":
            region = sysv.SharedMemory.from_id(int(args[0]))
        elif mechanism == "mapped-file":
            region = MappedFile.open(args[0])
        else:
            region = AnonymousMemory.from_fd(int(args[0]))
    return SlotChannel(region, signals, slot, 1)
