"""Shared-memory regions: one interface over every kind of shared mapping Linux offers.

* :class:`aioipc.posix.SharedMemory` -- a POSIX object in ``/dev/shm`` (``shm_open``);
* :class:`aioipc.sysv.SharedMemory` -- a System V segment (``shmget``/``shmat``);
* :class:`MappedFile` -- an ordinary file mapped ``MAP_SHARED`` (``msync`` by ``flush()``);
* :class:`AnonymousMemory` -- a ``memfd`` mapping, inherited by ``fork`` or handed to an
  unrelated process by passing its fd over a unix socket.

Every region exposes ``buf`` (a memoryview of exactly ``size`` bytes, read-only for a
read-only mapping), ``close()`` and the context-manager protocol. Constructors are plain
classmethods that never wait. A region never registers itself with multiprocessing's
``resource_tracker``: opening one never arranges for anyone to delete it, and no "leaked
shared_memory" warnings appear at exit. Removal is always explicit (``unlink()`` /
``remove()``).

Closing refuses (``BufferError``) while memoryviews taken from ``buf`` are alive, since
unmapping under them would crash the process; release them first.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import stat
import sys
from typing import Any, Self

from ..errors import (
    NOFOLLOW,
    IPCExistsError,
    IPCNotFoundError,
    IPCSystemError,
    Overrides,
    open_or_create,
    translate_os_error,
)
from . import libc as _libc
from . import registry as _registry
from .check import check_fd, check_mode, check_size
from .posix_base import check_name
from .sysv_base import SysVObject, check_key, key_repr, read_sysctl
from .threads import Workers

__all__ = [
    "AnonymousMemory",
    "MappedFile",
    "PosixSharedMemory",
    "SharedMemoryRegion",
    "SysVSharedMemory",
]


SHM_DIR = "/dev/shm"
_STILL_EXPORTED = (
    "{what}: memoryviews of this region are still alive; release them (view.release(), "
    "or let them go out of scope) before closing it"
)


def _mount_point(path: str) -> str:
    """The mount point of the file system that holds ``path`` (for error messages)."""
    here = os.path.dirname(os.path.abspath(path))
    while not os.path.ismount(here):
        here = os.path.dirname(here)
    return here


def reserve(fd: int, size: int, what: str, path: str, *, start: int = 0) -> None:
    """Make the file ``fd`` (at ``path``) ``size`` bytes long, with its blocks from
    ``start`` on allocated now.

    ``ftruncate`` alone makes a sparse file: the blocks are allocated when a page is
    first written through a mapping, and on a full file system (a small tmpfs
    ``/dev/shm``) that write gets SIGBUS, which kills the process (Python cannot catch
    it; ``MAP_POPULATE`` fails silently). Reserving them here turns that into an error
    at create time. On failure the file is cut back to ``start`` bytes.

    Raises:
        aioipc.IPCSystemError: ENOSPC, naming ``what``, the bytes asked for and the
            file system; or another error of the file system.
    """
    try:
        os.posix_fallocate(fd, start, size - start)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)

        def no_room(exc: OSError, what: str) -> Exception:
            return IPCSystemError(
                errno.ENOSPC,
                f"{what}: {_mount_point(path)} has no room for {size - start} bytes (ENOSPC)",
                path,
            )

        raise translate_os_error(exc, what, {errno.ENOSPC: no_room}) from exc


def _open_size(requested: int | None, actual: int, what: str) -> int:
    """The size to map when opening an object of ``actual`` bytes."""
    if actual == 0:
        raise ValueError(f"{what}: the object has size 0 (its creator has not sized it yet?)")
    if requested is None:
        return actual
    check_size(requested, what)
    if requested > actual:
        raise ValueError(f"{what}: asked to map {requested} bytes but the object has only {actual}")
    return requested


class SharedMemoryRegion:
    """What every region offers: ``buf``, ``size``, ``close()``, ``with``."""

    _what = "shared memory"

    def __init__(self, size: int, read_only: bool) -> None:
        self._size = size
        self._read_only = read_only
        self._buf: memoryview | None = None

    @property
    def buf(self) -> memoryview:
        """The mapped bytes: writable, or read-only for a read-only mapping.

        Raises:
            anyio.ClosedResourceError: the region is closed.
        """
        if self._buf is None:
            from anyio import ClosedResourceError

            raise ClosedResourceError(f"{self._what}: this region is closed")
        return self._buf

    @property
    def size(self) -> int:
        """Bytes mapped (``len(buf)``)."""
        return self._size

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def closed(self) -> bool:
        return self._buf is None

    def close(self) -> None:
        """Unmap (detach) the region; the object itself stays. Idempotent.

        Raises:
            BufferError: memoryviews taken from ``buf`` are still alive (nothing is
                unmapped; release them and close again).
        """
        if self._buf is None:
            return
        self._buf.release()
        try:
            self._unmap()
        except BufferError:
            self._buf = self._view()
            raise BufferError(_STILL_EXPORTED.format(what=self._what)) from None
        self._buf = None

    def _view(self) -> memoryview:
        raise NotImplementedError

    def _unmap(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Unmapping under a live view would crash; with views alive the mapping stays.
        if getattr(self, "_buf", None) is not None:
            with contextlib.suppress(BufferError):
                self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self._size} bytes"
        ro = " read-only" if self._read_only else ""
        return f"<aioipc {self._what}{ro} {state}>"


class _MmapRegion(SharedMemoryRegion):
    """A region mapped with Python's mmap (which refuses to close under live views)."""

    def _map(self, fd: int) -> None:
        prot = mmap.PROT_READ if self._read_only else mmap.PROT_READ | mmap.PROT_WRITE
        self._mm = mmap.mmap(fd, self._size, mmap.MAP_SHARED, prot)
        self._buf = self._view()

    def _view(self) -> memoryview:
        return memoryview(self._mm)

    def _unmap(self) -> None:
        self._mm.close()


def _fd_size(fd: int) -> int:
    return os.fstat(fd).st_size


class PosixSharedMemory(_MmapRegion):
    """A POSIX shared-memory object (``/dev/shm/NAME``), mapped ``MAP_SHARED``.

    ``unlink()`` removes the name: handles already open keep working, new ``open`` calls
    fail with :exc:`aioipc.IPCNotFoundError` (a ``FileNotFoundError``).
    """

    def __init__(self, name: str, fd: int, size: int, read_only: bool) -> None:
        super().__init__(size, read_only)
        self._name = name
        self._what = f"POSIX shared memory {name}"
        try:
            self._map(fd)
        except OSError as exc:
            raise translate_os_error(exc, self._what) from exc
        finally:
            os.close(fd)

    @staticmethod
    def _path(name: str) -> str:
        return SHM_DIR + check_name(name, "shared memory")

    @classmethod
    def create(cls, name: str, size: int, *, mode: int = 0o600) -> PosixSharedMemory:
        """Create ``name`` (exclusively) with ``size`` zero bytes and exactly ``mode``.

        Raises:
            aioipc.IPCExistsError: it exists already.
            aioipc.IPCPermissionError: /dev/shm refuses us.
            aioipc.IPCSystemError: /dev/shm has no room for ``size`` bytes (errno
                ENOSPC: the memory is reserved now, not at the first write); nothing
                is left behind.
            ValueError: a bad name or a size <= 0.
        """
        path = cls._path(name)
        what = f"POSIX shared memory {name}"
        check_size(size, what)
        check_mode(mode, what)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise translate_os_error(exc, what, NOFOLLOW) from exc
        handed = False
        try:
            os.fchmod(fd, mode)  # exactly mode, whatever the umask
            reserve(fd, size, what, path)
            st = os.fstat(fd)
            handed = True
            region = cls(name, fd, size, False)  # closes fd, mapped or not
        except BaseException as exc:
            if not handed:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            if isinstance(exc, OSError):
                raise translate_os_error(exc, what) from exc
            raise
        _registry.record("posix-shm", name, st=st)
        return region

    @classmethod
    def open(
        cls, name: str, size: int | None = None, *, read_only: bool = False
    ) -> PosixSharedMemory:
        """Map the existing object ``name`` (all of it, or its first ``size`` bytes).

        Raises:
            aioipc.IPCNotFoundError: no such object.
            aioipc.IPCPermissionError: its mode does not let us in.
            ValueError: ``size`` is larger than the object.
        """
        path = cls._path(name)
        what = f"POSIX shared memory {name}"
        # O_NONBLOCK: a FIFO planted under the name must not hang the open.
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_NOFOLLOW | os.O_CLOEXEC
        flags |= os.O_NONBLOCK
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise translate_os_error(exc, what, NOFOLLOW) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IPCNotFoundError(errno.ENOENT, f"{what}: not a shared-memory object")
            mapped = _open_size(size, st.st_size, what)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, mapped, read_only)

    @classmethod
    def open_or_create(cls, name: str, size: int, *, mode: int = 0o600) -> PosixSharedMemory:
        """Open ``name``, creating it (``size`` bytes, ``mode``) if it does not exist.

        Raises: as :meth:`create` and :meth:`open` (ENOSPC when it creates).
        """
        return open_or_create(
            lambda: cls.create(name, size, mode=mode),
            lambda: cls.open(name, size=size),
            IPCExistsError(
                errno.EEXIST, f"POSIX shared memory {name}: keeps appearing and vanishing"
            ),
        )

    @property
    def name(self) -> str:
        return self._name

    def unlink(self) -> None:
        """Remove the name (the memory lives on while anyone has it mapped).

        Raises:
            aioipc.IPCNotFoundError: it was unlinked already.
        """
        unlink_shared_memory(self._name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen_posix, (self._name, self._size, self._read_only))


def _reopen_posix(name: str, size: int, read_only: bool) -> PosixSharedMemory:
    return PosixSharedMemory.open(name, size=size, read_only=read_only)


def unlink_shared_memory(name: str) -> None:
    """Remove the POSIX shared-memory object ``name``.

    Raises:
        aioipc.IPCNotFoundError: no such object.
        aioipc.IPCPermissionError: we may not remove it.
    """
    try:
        os.unlink(PosixSharedMemory._path(name))
    except OSError as exc:
        raise translate_os_error(exc, f"POSIX shared memory {name}") from exc
    _registry.forget("posix-shm", name)


def _symlink_path(exc: OSError, what: str) -> Exception:
    # The caller's own path, not a shared directory: a symlink there is a bad argument.
    return ValueError(f"{what}: is a symlink, which aioipc does not follow")


_PATH_ERRORS: Overrides = {errno.ELOOP: _symlink_path}


class MappedFile(_MmapRegion):
    """An ordinary file mapped ``MAP_SHARED``: writes reach the file, ``flush()`` syncs."""

    def __init__(self, path: str, fd: int, size: int, read_only: bool) -> None:
        super().__init__(size, read_only)
        self._path = path
        self._what = f"mapped file {path}"
        try:
            self._map(fd)
        except OSError as exc:
            raise translate_os_error(exc, self._what) from exc
        finally:
            os.close(fd)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        size: int | None = None,
        *,
        create: bool = False,
        read_only: bool = False,
        mode: int = 0o600,
    ) -> MappedFile:
        """Map the file at ``path``: all of it, or ``size`` bytes.

        With ``create=True`` a missing file is created with exactly ``mode``, and a file
        shorter than ``size`` is extended with zero bytes. A symlink at ``path`` is never
        followed.

        Raises:
            aioipc.IPCNotFoundError: no file (and ``create`` is false).
            aioipc.IPCPermissionError: the file's mode does not let us in.
            aioipc.IPCSystemError: with ``create``, the file system has no room to
                create or extend the file to ``size`` bytes (errno ENOSPC: the blocks
                are reserved now, not at the first write); a file created is removed,
                one extended is cut back.
            ValueError: ``size`` <= 0, larger than the file without ``create``, or an
                empty file without ``size``; ``path`` is not a regular file.
        """
        p = os.fspath(path)
        what = f"mapped file {p}"
        if size is not None:
            check_size(size, what)
        if create and read_only:
            raise ValueError(f"{what}: create=True needs a writable mapping")
        check_mode(mode, what)
        if create and size is None and not os.path.lexists(p):
            raise ValueError(f"{what}: does not exist; create=True needs a size")
        base = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_NOFOLLOW | os.O_CLOEXEC
        base |= os.O_NONBLOCK  # a FIFO at the path must not hang the open
        created = False
        try:
            if create:
                try:
                    fd = os.open(p, base | os.O_CREAT | os.O_EXCL, 0o600)
                    created = True
                except FileExistsError:
                    fd = os.open(p, base)
            else:
                fd = os.open(p, base)
        except OSError as exc:
            raise translate_os_error(exc, what, _PATH_ERRORS) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{what}: not a regular file")
            if created:
                os.fchmod(fd, mode)
            if create and size is not None and st.st_size < size:
                reserve(fd, size, what, p, start=st.st_size)
                actual = size
            else:
                actual = st.st_size
            mapped = _open_size(size, actual, what)
        except BaseException as exc:
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):
                    os.unlink(p)
            if isinstance(exc, OSError):
                raise translate_os_error(exc, what) from exc
            raise
        try:
            return cls(p, fd, mapped, read_only)
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    os.unlink(p)
            raise

    @property
    def path(self) -> str:
        return self._path

    def flush(self) -> None:
        """Write dirty pages back to the file now (``msync(MS_SYNC)``).

        Blocks the calling thread for the disk write (no event-loop wait: a few
        milliseconds on a local disk, nothing on tmpfs).

        Raises:
            anyio.ClosedResourceError: the region is closed.
            aioipc.IPCSystemError: the kernel reported a write error.
        """
        self.buf  # noqa: B018 -- raises ClosedResourceError when closed
        try:
            self._mm.flush()
        except OSError as exc:
            raise translate_os_error(exc, self._what) from exc


class AnonymousMemory(_MmapRegion):
    """Anonymous shared memory (a ``memfd``), for a parent and its children.

    Hand-off: a child made by ``os.fork()`` (or multiprocessing's fork) simply uses the
    same object. A spawned or unrelated process gets the memory by receiving :attr:`fd`
    over a unix socket (``await chan.send_fds(b"...", [region.fd])``) and calling
    :meth:`from_fd` on what it received.
    """

    def __init__(self, size: int, *, _fd: int | None = None) -> None:
        what = "anonymous shared memory"
        if _fd is None:
            check_size(size, what)
            try:
                fd = os.memfd_create("aioipc", os.MFD_CLOEXEC)
            except OSError as exc:
                raise translate_os_error(exc, what) from exc
            try:
                os.ftruncate(fd, size)
            except OSError as exc:
                os.close(fd)
                raise translate_os_error(exc, what) from exc
        else:
            fd = _fd
        super().__init__(size, False)
        self._fd = fd
        self._what = f"{what} (memfd {fd})"
        try:
            self._map(fd)
        except BaseException as exc:
            if _fd is None:
                os.close(fd)  # ours; a refused fd of from_fd stays its caller's
            if isinstance(exc, OSError):
                raise translate_os_error(exc, self._what) from exc
            raise

    @classmethod
    def create(cls, size: int) -> AnonymousMemory:
        """A new region of ``size`` zero bytes.

        Raises:
            ValueError: a size <= 0.
            aioipc.IPCSystemError: out of file descriptors (EMFILE, naming RLIMIT_NOFILE)
                or memory.
        """
        return cls(size)

    @classmethod
    def from_fd(cls, fd: int) -> AnonymousMemory:
        """Map the memfd ``fd`` (received from another process); the region owns ``fd``
        once it is mapped (a refused ``fd`` stays the caller's).

        Raises:
            TypeError: ``fd`` is not an int.
            ValueError: ``fd`` is not an open file descriptor, not a regular (memfd)
                file, or is empty.
            aioipc.IPCPermissionError: ``fd`` is not open for reading and writing (a
                region is mapped writable).
            aioipc.IPCSystemError: mapping it failed (out of file descriptors: EMFILE,
                naming RLIMIT_NOFILE; out of memory).

        Whatever it raises, ``fd`` is left open: it is still the caller's.
        """
        what = "anonymous shared memory"
        check_fd(fd, what)
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise translate_os_error(exc, f"{what} (fd {fd})") from exc
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what}: fd {fd} is not a memfd or regular file")
        return cls(_open_size(None, st.st_size, f"{what} (fd {fd})"), _fd=fd)

    @property
    def fd(self) -> int:
        """The memfd; pass it to another process (it is closed by :meth:`close`)."""
        return self._fd

    def _unmap(self) -> None:
        super()._unmap()
        os.close(self._fd)
        self._fd = -1


def _shmget_errors(size: int) -> Overrides:
    """shmget's EINVAL when creating: the size is beyond shmmax (or the key's segment
    is smaller)."""

    def too_big(exc: OSError, what: str) -> Exception:
        shmmax = read_sysctl("/proc/sys/kernel/shmmax", 0)
        return ValueError(
            f"{what}: size {size} is beyond the kernel's limit kernel.shmmax={shmmax}, "
            "or a segment with that key exists with a smaller size"
        )

    return {errno.EINVAL: too_big}


class SysVSharedMemory(SysVObject, SharedMemoryRegion):
    """A System V shared-memory segment, attached at a kernel-chosen address.

    ``remove()`` marks the segment destroyed (``IPC_RMID``): processes attached keep using
    it and the kernel frees it at the last detach; new ``open`` calls fail.
    """

    _kind = "shm"
    _kind_name = "SysV shared memory"

    def __init__(self, key: int, shmid: int, size: int, read_only: bool) -> None:
        SysVObject.__init__(self, key, shmid)
        SharedMemoryRegion.__init__(self, size, read_only)
        self._jobs = Workers()  # none ever runs: SysVObject.aclose stops them
        self._remove_on_close = False
        try:
            self._addr = _libc.shmat(shmid, _libc.SHM_RDONLY if read_only else 0)
        except OSError as exc:
            raise translate_os_error(exc, f"{self._what}: attach") from exc
        self._array = (ctypes.c_char * size).from_address(self._addr)
        self._buf = self._view()
        self._closed = False

    def _view(self) -> memoryview:
        view = memoryview(self._array).cast("B")
        return view.toreadonly() if self._read_only else view

    def _unmap(self) -> None:
        # A view of a ctypes array keeps the array alive, so extra references mean views
        # the user still holds (ours: the attribute and getrefcount's argument).
        if sys.getrefcount(self._array) > 2:
            raise BufferError
        _libc.shmdt(self._addr)
        self._closed = True

    def detach(self) -> None:
        """The same as :meth:`close`."""
        self.close()

    @classmethod
    def create(cls, key: int, size: int, *, mode: int = 0o600) -> SysVSharedMemory:
        """Create a segment of ``size`` zero bytes (exclusively, unless ``key`` is
        ``IPC_PRIVATE``) with ``mode``, and attach it.

        Raises:
            aioipc.IPCExistsError: a segment with that key exists.
            aioipc.IPCSystemError: ``size`` is beyond shmmax/shmall (EINVAL/ENOSPC).
            ValueError: ``size`` <= 0.
        """
        check_key(key)
        check_size(size, f"{cls._kind_name} key={key_repr(key)}")
        check_mode(mode, f"{cls._kind_name} key={key_repr(key)}")
        try:
            shmid = _libc.shmget(key, size, _libc.IPC_CREAT | _libc.IPC_EXCL | (mode & 0o777))
        except OSError as exc:
            raise cls._lookup_error(exc, key, True, _shmget_errors(size)) from exc
        try:
            segment = cls(key, shmid, size, False)
        except BaseException:
            # We made it but cannot attach it (a mode that locks us out): do not leave an
            # orphan behind, least of all a private one nobody could find again.
            with contextlib.suppress(OSError):
                _libc.shmctl(shmid, _libc.IPC_RMID)
            raise
        segment._record_created()
        return segment

    @classmethod
    def open(
        cls, key: int, size: int | None = None, *, read_only: bool = False
    ) -> SysVSharedMemory:
        """Attach the existing segment ``key`` (all of it, or its first ``size`` bytes).

        Raises:
            aioipc.IPCNotFoundError: no segment with that key.
            aioipc.IPCPermissionError: its mode does not let us in.
            ValueError: ``size`` is larger than the segment.
        """
        check_key(key)
        try:
            shmid = _libc.shmget(key, 0, 0)
        except OSError as exc:
            raise cls._lookup_error(exc, key, False) from exc
        return cls._attach_id(shmid, key, size, read_only)

    @classmethod
    def from_id(cls, shmid: int, *, read_only: bool = False) -> SysVSharedMemory:
        """Attach the segment with kernel id ``shmid`` (works for private segments)."""
        return cls._attach_id(shmid, None, None, read_only)

    @classmethod
    def _attach_id(
        cls, shmid: int, key: int | None, size: int | None, read_only: bool
    ) -> SysVSharedMemory:
        shmid = cls._check_id(shmid)
        try:
            ds = _libc.shmctl_stat(shmid)
        except OSError as exc:
            raise cls._lookup_error(exc, key or 0, False, ipc_id=shmid) from exc
        real_key = int(ds.perm.key) if key is None else key
        what = f"{cls._kind_name} key={key_repr(real_key)} id={shmid}"
        return cls(real_key, shmid, _open_size(size, int(ds.segsz), what), read_only)

    @classmethod
    def open_or_create(cls, key: int, size: int, *, mode: int = 0o600) -> SysVSharedMemory:
        """Attach segment ``key``, creating it (``size`` bytes, ``mode``) if missing."""
        return open_or_create(
            lambda: cls.create(key, size, mode=mode),
            lambda: cls.open(key, size=size),
            IPCExistsError(
                errno.EEXIST, f"{cls._kind_name} key={key_repr(key)}: keeps appearing and vanishing"
            ),
        )

    def _stat(self) -> _libc.ShmidDs:
        return _libc.shmctl_stat(self._id)

    def _ipc_set(self, ds: _libc.ShmidDs) -> None:
        _libc.shmctl(self._id, _libc.IPC_SET, ds)

    def _rmid(self) -> None:
        _libc.shmctl(self._id, _libc.IPC_RMID)

    def _ds(self) -> _libc.ShmidDs:
        # A detached handle may still read the segment's state.
        ds: _libc.ShmidDs = self._checked_stat(need_open=False)
        return ds

    @property
    def segment_size(self) -> int:
        """The segment's size in the kernel (``shm_segsz``)."""
        return int(self._ds().segsz)

    @property
    def nattch(self) -> int:
        """How many attaches the segment has now, across all processes."""
        return int(self._ds().nattch)

    @property
    def cpid(self) -> int:
        """Process id of the creator."""
        return int(self._ds().cpid)

    @property
    def lpid(self) -> int:
        """Process id of the last shmat/shmdt."""
        return int(self._ds().lpid)

    @property
    def atime(self) -> int:
        """Time of the last attach (seconds since the epoch; 0 = never)."""
        return int(self._ds().atime)

    @property
    def dtime(self) -> int:
        """Time of the last detach (seconds since the epoch; 0 = never)."""
        return int(self._ds().dtime)

    @property
    def ctime(self) -> int:
        """Time of the last change (creation or IPC_SET)."""
        return int(self._ds().ctime)

    @property
    def removed(self) -> bool:
        """True once ``IPC_RMID`` was done: the segment dies with its last detach."""
        return bool(int(self._ds().perm.mode) & _libc.SHM_DEST)

    def _perm(self) -> _libc.IpcPerm:
        perm: _libc.IpcPerm = self._ds().perm
        return perm

    async def aclose(self) -> None:
        """The same as :meth:`close` (for ``async with``-style cleanup code)."""
        self.close()

    def __del__(self) -> None:
        SharedMemoryRegion.__del__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reattach_sysv, (self._id, self._read_only))

    def __repr__(self) -> str:
        return SharedMemoryRegion.__repr__(self)


def _reattach_sysv(shmid: int, read_only: bool) -> SysVSharedMemory:
    return SysVSharedMemory.from_id(shmid, read_only=read_only)
