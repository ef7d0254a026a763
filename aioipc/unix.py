"""Unix domain sockets: stream, seqpacket and datagram channels, listeners, fd passing.

::

    async with await aioipc.unix.listen("/run/app.sock") as listener:
        await listener.serve(handler)                  # each connection in its own task

    async with await aioipc.unix.connect("/run/app.sock") as chan:
        await chan.send(b"ping")
        print(await chan.receive())

``kind="stream"`` (default) is framed with the 4-byte length prefix (``framing=False``
for raw bytes); ``kind="seqpacket"`` and ``kind="dgram"`` keep the kernel's own message
boundaries. A name starting with ``@`` is a Linux abstract-namespace name (no file).

Security by default:

* a socket file is created with mode 0600 (set on the socket before ``bind``, so it is
  never wider, even for an instant);
* an abstract name has no permission bits, so an abstract listener checks each peer's
  uid (SO_PEERCRED, or SCM_CREDENTIALS per datagram) and accepts only the listening
  user's, unless ``allowed_uids`` says otherwise; rejected peers are dropped;
* ``listen`` reclaims a socket file left by a dead process (nobody accepts on it), but a
  path held by a live listener raises :exc:`aioipc.IPCExistsError`; it never removes
  anything that is not a socket.

Peer credentials (pid, uid, gid at connect time) are in
``chan.extra(IPCAttribute.peer_pid)`` and friends.
"""

from __future__ import annotations

from ._core.unix import MAX_FDS as MAX_FDS
from ._core.unix import Kind as Kind
from ._core.unix import UnixChannel as UnixChannel
from ._core.unix import UnixDatagramEndpoint as UnixDatagramEndpoint
from ._core.unix import UnixListener as UnixListener
from ._core.unix import UnixMessageChannel as UnixMessageChannel
from ._core.unix import connect as connect
from ._core.unix import listen as listen

__all__ = [
    "Kind",
    "MAX_FDS",
    "UnixChannel",
    "UnixDatagramEndpoint",
    "UnixListener",
    "UnixMessageChannel",
    "connect",
    "listen",
]
