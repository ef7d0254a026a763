"""ctypes bindings for the System V calls that sysv_ipc does not expose (64-bit Linux).

sysv_ipc has no MSG_EXCEPT or MSG_NOERROR, a single semaphore per set, and (in the PyPI
1.2.0 wheel) no semaphore timeouts, so aioipc calls the C library directly. ctypes
releases the GIL around every call, so a worker blocked in ``msgrcv`` or ``semop``
holds nobody up.

Every wrapper raises :exc:`OSError` with the call's errno; the modules that use them
translate it into aioipc's errors with the object's name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from typing import Any

__all__ = [
    "GETALL",
    "GETNCNT",
    "GETVAL",
    "GETZCNT",
    "IPC_CREAT",
    "IPC_EXCL",
    "IPC_NOWAIT",
    "IPC_PRIVATE",
    "IPC_RMID",
    "IPC_SET",
    "IPC_STAT",
    "MSG_COPY",
    "MSG_EXCEPT",
    "MSG_NOERROR",
    "MSG_QBYTES_MAX",
    "SEM_UNDO",
    "SETALL",
    "SETVAL",
    "IpcPerm",
    "MsqidDs",
    "SemidDs",
    "ShmidDs",
    "call",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgwait",
    "msgsnd",
    "semctl",
    "semctl_stat",
    "semget",
    "semop",
    "semop_array",
    "semop_errno",
    "sembufs",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "thread_errno",
]

IPC_PRIVATE = 0
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
IPC_SET = 1
IPC_STAT = 2
MSG_NOERROR = 0o10000
MSG_EXCEPT = 0o20000
#: Copy the message at position msgtyp, leaving it queued (with IPC_NOWAIT only).
MSG_COPY = 0o40000
SEM_UNDO = 0x1000
GETNCNT = 14
GETVAL = 12
GETALL = 13
GETZCNT = 15
SETVAL = 16
SETALL = 17
SHM_RDONLY = 0o10000
#: In ``shm_perm.mode``: IPC_RMID was done; the segment goes with its last detach.
SHM_DEST = 0o1000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class IpcPerm(ctypes.Structure):
    _fields_ = (
        ("key", ctypes.c_int),
        ("uid", ctypes.c_uint),
        ("gid", ctypes.c_uint),
        ("cuid", ctypes.c_uint),
        ("cgid", ctypes.c_uint),
        ("mode", ctypes.c_uint),
        ("seq", ctypes.c_ushort),
        ("pad2", ctypes.c_ushort),
        ("reserved1", ctypes.c_ulong),
        ("reserved2", ctypes.c_ulong),
    )


class MsqidDs(ctypes.Structure):
    _fields_ = (
        ("perm", IpcPerm),
        ("stime", ctypes.c_long),
        ("rtime", ctypes.c_long),
        ("ctime", ctypes.c_long),
        ("cbytes", ctypes.c_ulong),
        ("qnum", ctypes.c_ulong),
        ("qbytes", ctypes.c_ulong),
        ("lspid", ctypes.c_int),
        ("lrpid", ctypes.c_int),
        ("reserved4", ctypes.c_ulong),
        ("reserved5", ctypes.c_ulong),
    )


class SemidDs(ctypes.Structure):
    # x86-64 keeps padding after each time (checked with offsetof: nsems at 80, size
    # 104); the generic 64-bit layout (aarch64, asm-generic/sembuf.h) has none.
    _fields_ = (
        (
            ("perm", IpcPerm),
            ("otime", ctypes.c_long),
            ("otime_high", ctypes.c_ulong),
            ("ctime", ctypes.c_long),
            ("ctime_high", ctypes.c_ulong),
            ("nsems", ctypes.c_ulong),
            ("reserved3", ctypes.c_ulong),
            ("reserved4", ctypes.c_ulong),
        )
        if platform.machine() == "x86_64"
        else (
            ("perm", IpcPerm),
            ("otime", ctypes.c_long),
            ("ctime", ctypes.c_long),
            ("nsems", ctypes.c_ulong),
            ("reserved3", ctypes.c_ulong),
            ("reserved4", ctypes.c_ulong),
        )
    )


class ShmidDs(ctypes.Structure):
    _fields_ = (
        ("perm", IpcPerm),
        ("segsz", ctypes.c_size_t),
        ("atime", ctypes.c_long),
        ("dtime", ctypes.c_long),
        ("ctime", ctypes.c_long),
        ("cpid", ctypes.c_int),
        ("lpid", ctypes.c_int),
        ("nattch", ctypes.c_ulong),
        ("reserved5", ctypes.c_ulong),
        ("reserved6", ctypes.c_ulong),
    )


class Sembuf(ctypes.Structure):
    _fields_ = (("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short))


#: The largest capacity ``msg_qbytes`` can hold (an unsigned long): a larger value would
#: be cut to its low bits by ctypes, 2**70 to a queue of capacity 0.
MSG_QBYTES_MAX: int = 2 ** (8 * MsqidDs.qbytes.size) - 1

assert ctypes.sizeof(MsqidDs) == 120
assert ctypes.sizeof(SemidDs) == (104 if platform.machine() == "x86_64" else 88)
assert ctypes.sizeof(Sembuf) == 6
assert ctypes.sizeof(ShmidDs) == 112


def _bind(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(_libc, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


_msgget = _bind("msgget", ctypes.c_int, ctypes.c_int, ctypes.c_int)
_msgsnd = _bind(
    "msgsnd", ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int
)
_msgrcv = _bind(
    "msgrcv",
    ctypes.c_ssize_t,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_long,
    ctypes.c_int,
)
_msgctl = _bind("msgctl", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_semget = _bind("semget", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int)
_semop = _bind("semop", ctypes.c_int, ctypes.c_int, ctypes.POINTER(Sembuf), ctypes.c_size_t)
# semctl is variadic; on the 64-bit Linux ABIs the union semun travels in one register,
# so passing its member (an int or a pointer) as a fixed fourth argument is exact.
_semctl_ptr = _bind(
    "semctl", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p
)

_shmget = _bind("shmget", ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
_shmat = _bind("shmat", ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_shmdt = _bind("shmdt", ctypes.c_int, ctypes.c_void_p)
_shmctl = _bind("shmctl", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _error() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


# ctypes.get_errno() is no help after another extension's call: it reads ctypes' own
# copy, swapped with the thread's errno only around ctypes calls made with
# use_errno=True (it answers 0 after a failed posix_ipc call). This handle is made
# without use_errno, so calling through it leaves the thread's errno as it is.
_errno_location = ctypes.CDLL(ctypes.util.find_library("c") or None).__errno_location
_errno_location.restype = ctypes.POINTER(ctypes.c_int)
_errno_location.argtypes = ()


def thread_errno() -> int:
    """The calling thread's C ``errno`` as it is now.

    For a C extension that reports a failed call without its errno (posix_ipc): read at
    once in the ``except`` clause, before anything else can make a failing call, it is
    the errno of that call. Callers still check it against what the exception's class
    allows (see ``posix_base.posix_errno``).
    """
    value: int = _errno_location().contents.value
    return value


def clear_thread_errno() -> None:
    """Set the calling thread's C ``errno`` to 0, before a call whose failure
    :func:`thread_errno` will read: posix_ipc raises some errors (a closed handle, a bad
    argument) without making a system call, and the errno left by an earlier call must
    not be taken for theirs."""
    _errno_location().contents.value = 0


def call(name: str, *args: Any) -> int:
    """Call the C library's ``name`` (for the few calls the standard library lacks,
    such as ``unshare``, ``mount`` or ``prctl``); raises OSError when it returns < 0."""
    result: int = getattr(_libc, name)(*args)
    if result < 0:
        raise _error()
    return result


_LONG = ctypes.sizeof(ctypes.c_long)


def msgget(key: int, flags: int) -> int:
    qid: int = _msgget(key, flags)
    if qid < 0:
        raise _error()
    return qid


def msgsnd(qid: int, mtype: int, data: bytes, flags: int) -> None:
    """Send ``data`` as one message of ``mtype`` (struct msgbuf: a long, then the text)."""
    buf = mtype.to_bytes(_LONG, "little", signed=True) + data
    if _msgsnd(qid, buf, len(data), flags) < 0:
        raise _error()


class ReceiveBuffer:
    """A reusable ``struct msgbuf`` for :func:`msgrcv` (one per thread that receives)."""

    __slots__ = ("addr", "buf", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = ctypes.create_string_buffer(_LONG + size)
        self.addr = ctypes.addressof(self.buf)


def msgrcv(qid: int, rbuf: ReceiveBuffer, size: int, mtype: int, flags: int) -> tuple[int, bytes]:
    """Receive one message of at most ``size`` bytes into ``rbuf``; return (type, data)."""
    n: int = _msgrcv(qid, rbuf.addr, min(size, rbuf.size), mtype, flags)
    if n < 0:
        raise _error()
    got_type = ctypes.c_long.from_address(rbuf.addr).value
    return got_type, ctypes.string_at(rbuf.addr + _LONG, n)


def msgwait(qid: int, rbuf: ReceiveBuffer, mtype: int, flags: int) -> tuple[int, bytes] | None:
    """Block until a message matching ``mtype`` is queued and leave it there: a msgrcv of
    size 0 without MSG_NOERROR, which the kernel answers with E2BIG (returned as None,
    with no exception on this hot path) -- except for a zero-length message, which fits
    and is taken (returned)."""
    n: int = _msgrcv(qid, rbuf.addr, 0, mtype, flags)
    if n < 0:
        if ctypes.get_errno() == errno.E2BIG:
            return None
        raise _error()
    return ctypes.c_long.from_address(rbuf.addr).value, b""


def msgctl_stat(qid: int) -> MsqidDs:
    ds = MsqidDs()
    if _msgctl(qid, IPC_STAT, ctypes.byref(ds)) < 0:
        raise _error()
    return ds


def msgctl(qid: int, cmd: int, ds: MsqidDs | None = None) -> None:
    if _msgctl(qid, cmd, None if ds is None else ctypes.byref(ds)) < 0:
        raise _error()


def semctl_stat(sid: int) -> SemidDs:
    ds = SemidDs()
    semctl(sid, 0, IPC_STAT, ds)
    return ds


def semget(key: int, nsems: int, flags: int) -> int:
    sid: int = _semget(key, nsems, flags)
    if sid < 0:
        raise _error()
    return sid


def semop(sid: int, ops: list[tuple[int, int, int]]) -> None:
    """Apply ``ops`` [(index, delta, flags)] atomically as one semop."""
    semop_array(sid, sembufs(ops))


def sembufs(ops: list[tuple[int, int, int]]) -> ctypes.Array[Sembuf]:
    """``ops`` [(index, delta, flags)] as the struct sembuf array semop takes, to build
    once and pass to :func:`semop_array` / :func:`semop_errno` many times (building it
    is most of what a no-wait semop costs from Python: 3.6 us against 1.5 us here)."""
    return (Sembuf * len(ops))(*(Sembuf(*op) for op in ops))


def semop_array(sid: int, arr: ctypes.Array[Sembuf]) -> None:
    """semop with a prepared array; raises OSError."""
    if _semop(sid, arr, len(arr)) < 0:
        raise _error()


def semop_errno(sid: int, arr: ctypes.Array[Sembuf]) -> int:
    """semop with a prepared array; 0, or the errno (no exception: EAGAIN is the common
    answer of a no-wait try)."""
    if _semop(sid, arr, len(arr)) < 0:
        return ctypes.get_errno()
    return 0


def semctl(sid: int, num: int, cmd: int, arg: int | ctypes.Array[Any] | Any = 0) -> int:
    """semctl with an int (SETVAL), an array (GETALL/SETALL) or a struct pointer (STAT/SET)."""
    if isinstance(arg, int):
        ptr: Any = arg
    elif isinstance(arg, ctypes.Array):
        ptr = ctypes.addressof(arg)
    else:
        ptr = ctypes.addressof(arg)
    r: int = _semctl_ptr(sid, num, cmd, ptr)
    if r < 0:
        raise _error()
    return r


def shmget(key: int, size: int, flags: int) -> int:
    shmid: int = _shmget(key, size, flags)
    if shmid < 0:
        raise _error()
    return shmid


def shmat(shmid: int, flags: int) -> int:
    addr = _shmat(shmid, None, flags)
    # shmat returns (void *) -1 on failure, which ctypes gives back as 2**64 - 1.
    if addr is None or addr == ctypes.c_void_p(-1).value:
        raise _error()
    return int(addr)


def shmdt(addr: int) -> None:
    if _shmdt(addr) < 0:
        raise _error()


def shmctl_stat(shmid: int) -> ShmidDs:
    ds = ShmidDs()
    shmctl(shmid, IPC_STAT, ds)
    return ds


def shmctl(shmid: int, cmd: int, ds: ShmidDs | None = None) -> None:
    if _shmctl(shmid, cmd, None if ds is None else ctypes.byref(ds)) < 0:
        raise _error()
