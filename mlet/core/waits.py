"""What this process waits for that its own run does not do (another run's build of a cache it needs), told to
whoever listens.

Under torchrun the run's other processes wait for this one meanwhile
(``mlet.parallel.turns``); told that it waits for another run, they wait with
it rather than stop at ``--dist-timeout``, and say why. The lower layers
tell; the layer that knows the processes listens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Listener = Callable[[str | None], object]
_listeners: list[Listener] = []


def waiting_for(what: str) -> None:
    """Tell the listeners that this process now waits for ``what`` (``another run's build of DIR (pid N on
    HOST)``)."""
    for listener in list(_listeners):
        listener(what)


def done_waiting() -> None:
    """Tell the listeners that this process waits for nothing outside its run (any more)."""
    for listener in list(_listeners):
        listener(None)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """While inside, ``listener(what)`` hears each :func:`waiting_for` and ``listener(None)`` each
    :func:`done_waiting`."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
