"""How the processes of a torchrun run find each other, and what one says while its peers do not come.

Rank 0 hosts the group's store at ``MASTER_ADDR:MASTER_PORT`` (or torchrun's
agent does); every process connects to it and counts itself in, then polls
the count until the whole ``WORLD_SIZE`` is in, and only then builds the gloo
group, which connects at once. Polling, rather than waiting inside torch,
lets a process say, once and after a short wait, what it waits for (how many
have joined, or that nothing answers at the address yet), and stop at
``--dist-timeout`` with one line naming the flag rather than torch's timeout
messages. See docs/distributed.md.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from mlet.core.errors import UserError
from mlet.core.launch import launched_rank, launched_world_size

_joined: list[dist.Store] = []  # the store this process met the others at, under its attempt's prefix (one join)
NOTICE_S = 20.0  # a process that has waited this long (or half --dist-timeout, if less) says what it waits for
POLL_S = 0.5


def duration(seconds: float) -> str:
    """``30 min``, ``90 s``: a timeout for a line."""
    return f"{int(seconds) // 60} min" if seconds >= 60 and int(seconds) % 60 == 0 else f"{int(seconds)} s"


@dataclass(frozen=True)
class Rendezvous:
    """Where this process meets the others: its rank, their number, the store's address, the timeout."""

    rank: int
    world_size: int
    address: str
    port: int
    timeout_s: int

    @classmethod
    def from_environment(cls, timeout_s: int) -> Rendezvous:
        """torchrun's ``MASTER_ADDR`` and ``MASTER_PORT`` (a :class:`UserError` naming one that is missing or bad)."""
        address, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
        if "RANK" not in os.environ:  # read as rank 0, it would clash with the real one over the store's port
            raise UserError(
                "RANK: not set, though WORLD_SIZE is; torchrun sets both (with MASTER_ADDR and MASTER_PORT)"
            )
        if not address:
            raise UserError("MASTER_ADDR: not set; torchrun sets it (with RANK and WORLD_SIZE), or set it yourself")
        if not (port.isdigit() and 0 < int(port) < 2**16):
            raise UserError(f"MASTER_PORT: expected a TCP port (1-65535), got {port!r}")
        return cls(launched_rank(), launched_world_size(), address, int(port), timeout_s)

    @property
    def where(self) -> str:
        """``ADDRESS:PORT`` of the store."""
        return f"{self.address}:{self.port}"

    @property
    def agent_store(self) -> bool:
        """Whether torchrun's agent hosts the store (every process connects to it), as torch decides."""
        return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)

    @property
    def attempt(self) -> str:
        """torchrun's attempt (its restart count): its agent keeps one store across restarts."""
        return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")

    @property
    def key(self) -> str:
        """The store's count of the processes in, one per attempt."""
        return f"dlrm_mlet/joined/{self.attempt}"

    @property
    def group_prefix(self) -> str:
        """The default group's keys in the store, one set per attempt: a restart's gloo group must not read the
        addresses that the previous attempt's processes left there (torchrun without --standalone, whose store
        outlives them, failed so: 'Gloo connectFullMesh failed ... Connection refused')."""
        return f"default_pg/{self.attempt}"

    @property
    def host(self) -> str:
        """Who hosts the store, for the waiting line."""
        return "torchrun's agent" if self.agent_store else "rank 0"


class Patience:
    """How long this process has waited: one line once it has waited a while, a :class:`UserError` at the
    timeout."""

    def __init__(self, place: Rendezvous) -> None:
        self.place, self.start, self.said = place, time.monotonic(), False

    def tick(self, state: str) -> None:
        """After one more look at the others (``state``: what was seen), say so or stop, as it is time to."""
        waited, timeout = time.monotonic() - self.start, self.place.timeout_s
        if waited >= timeout:
            raise UserError(
                f"torch.distributed: the other processes did not all join within --dist-timeout ({duration(timeout)}):"
                f" {state}; start each of the {self.place.world_size} (RANK 0..{self.place.world_size - 1}, this "
                "MASTER_ADDR and MASTER_PORT), or give a longer --dist-timeout"
            )
        if not self.said and waited >= min(NOTICE_S, timeout / 2):
            self.said = True
            line = f"waiting for the other processes of the group: {state}; --dist-timeout {duration(timeout)}"
            print(f"rank {self.place.rank}: {line}", file=sys.stderr, flush=True)
        time.sleep(POLL_S)


def join(timeout_s: int) -> None:
    """Join the run's default (gloo) group once every process has reached the store (see the module docstring)."""
    place = Rendezvous.from_environment(timeout_s)
    patience = Patience(place)
    store = connect(place, patience)
    store.add(place.key, 1)
    while (joined := store.add(place.key, 0)) < place.world_size:
        patience.tick(f"{joined} of {place.world_size} joined at {place.where}")
    dist.init_process_group(
        "gloo",
        store=dist.PrefixStore(place.group_prefix, store),
        rank=place.rank,
        world_size=place.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    _joined[:] = [dist.PrefixStore(f"dlrm_mlet/{place.attempt}", store)]


def joined_store() -> dist.Store:
    """The store this process met the others at (:func:`join`), for waits that are not collectives; its keys are
    this torchrun attempt's own."""
    if not _joined:
        raise RuntimeError("the processes have not joined through mlet.parallel.joining.join")
    return _joined[0]


def store_if_joined() -> dist.Store | None:
    """The store of :func:`joined_store`, or ``None`` in a process that has not joined one (a single process)."""
    return _joined[0] if _joined else None


def connect(place: Rendezvous, patience: Patience) -> dist.TCPStore:
    """The store: hosted here on rank 0 (unless torchrun's agent hosts it), else reached once it answers."""
    hosts = place.rank == 0 and not place.agent_store
    if not hosts:  # torch's client would wait silently, then log its retries and a C++ stack
        while not answers(place.address, place.port):
            patience.tick(f"nothing answers at {place.where} yet ({place.host} hosts the group's store there)")
    return dist.TCPStore(
        place.address,
        place.port,
        place.world_size,
        is_master=hosts,
        timeout=timedelta(seconds=place.timeout_s),
        wait_for_workers=False,  # the count above waits for them instead
        multi_tenant=not place.agent_store,
        use_libuv=os.environ.get("USE_LIBUV", "1") == "1",  # as torch's env:// reads it (0: a known workaround)
    )


def answers(address: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``address:port``."""
    try:
        with socket.create_connection((address, port), timeout=2 * POLL_S):
            return True
    except OSError:
        return False
