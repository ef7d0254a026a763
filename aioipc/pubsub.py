"""Publish/subscribe across processes: a broadcast topic in shared memory, no broker.

A topic named ``/news`` is a log of messages in ``/dev/shm/news`` (mode 0600 by
default) with a capacity in bytes and a number of subscriber slots fixed at creation.
Any number of :class:`Publisher` handles (processes or tasks) publish to it; every
message gets one place in one total order, and every :class:`Subscriber` reads that
order from its own cursor::

    topic = pubsub.Topic.create("/news", capacity=1 << 20, max_subscribers=16)
    pub = topic.publisher()                       # anyio ObjectSendStream[bytes]
    sub = await pubsub.subscribe("/news", policy="drop_oldest", start="now")
    await pub.send(b"hello")
    assert await sub.receive() == b"hello"

Each subscriber picks what happens when it falls more than the capacity behind:
``"block"`` (publishers wait for it, nothing is lost), ``"drop_oldest"`` (default:
its next receive raises :exc:`aioipc.LaggedError` saying how many it missed, then it
continues from the oldest message retained) or ``"disconnect"`` (it is cut off with
BrokenResourceError). A subscriber killed by SIGKILL stops holding ``block``
publishers back within a second; a publisher killed in the middle of a publish leaves
nothing partial. A busy topic makes no system call per message; an idle subscriber
sleeps on its own doorbell and costs no CPU. See docs/pubsub.md.

By URL: ``aioipc.connect("pubsub://news")`` is a publisher,
``aioipc.listen("pubsub://news?policy=block")`` a subscriber.
"""

from __future__ import annotations

from ._core.pubsub import DEFAULT_CAPACITY as DEFAULT_CAPACITY
from ._core.pubsub import DEFAULT_MAX_SUBSCRIBERS as DEFAULT_MAX_SUBSCRIBERS
from ._core.pubsub import Policy as Policy
from ._core.pubsub import Publisher as Publisher
from ._core.pubsub import Start as Start
from ._core.pubsub import Subscriber as Subscriber
from ._core.pubsub import SubscriberInfo as SubscriberInfo
from ._core.pubsub import Topic as Topic
from ._core.pubsub import is_stale as is_stale
from ._core.pubsub import publisher as publisher
from ._core.pubsub import subscribe as subscribe
from ._core.pubsub import unlink as unlink
from .errors import LaggedError as LaggedError

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_SUBSCRIBERS",
    "LaggedError",
    "Policy",
    "Publisher",
    "Start",
    "Subscriber",
    "SubscriberInfo",
    "Topic",
    "is_stale",
    "publisher",
    "subscribe",
    "unlink",
]
