"""Precompute workers die with the run that started them.

Workers are forked by multiprocessing's forkserver, so a parent-death signal
of their own ties them to the forkserver, not to the main process; and the
forkserver, like the resource tracker, lives as long as any process holds its
pipe, which every worker does.  So after ``kill -9`` of the main process they
all lived on.  Now:

* the forkserver asks the kernel for SIGKILL when the main process exits
  (``prctl(PR_SET_PDEATHSIG)``, Linux; set by :mod:`.forkserver_preload`,
  which it imports last among its preload modules);
* each worker asks the same for when the forkserver exits: no Python code has
  to run, so a worker inside a long C call that holds the GIL dies at once;
* each worker also lets go of the forkserver's "alive" pipe (workers start no
  processes), so without parent-death signals (other systems) the forkserver
  still sees EOF when the main process is gone, and watches a pipe whose write
  end only the main process holds, exiting at EOF.

The resource tracker then sees EOF from all of them and exits.  One window
remains: a forkserver still importing its preload modules (``import soco_d2``,
a few seconds) when the main process dies exits when that import is done.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1
PARENT_ENV = "SOCO_D2_PRECOMPUTE_PID"  # the main process, as the forkserver inherits it
_alive_pipe = None  # (read end, write end), made once per process


def mark_parent() -> None:
    """Call before the forkserver starts: it learns which process it must die with."""
    os.environ[PARENT_ENV] = str(os.getpid())


def forkserver_dies_with_parent() -> None:
    """In the forkserver, after its preload imports: SIGKILL when the main process exits,
    and exit now if it already has (it died while we were importing)."""
    kill_me_with_parent()
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit() and int(parent) != os.getppid():
        os._exit(0)


def parent_alive_pipe():
    """The read end of this process's "alive" pipe, to pass to workers."""
    global _alive_pipe
    if _alive_pipe is None:
        _alive_pipe = mp.Pipe(duplex=False)
    return _alive_pipe[0]


def _exit_at_eof(alive) -> None:
    try:
        alive.recv_bytes()  # nothing is ever sent: this returns only at EOF
    except (EOFError, OSError):
        pass
    os._exit(1)


def kill_me_with_parent() -> bool:
    """SIGKILL this process when its parent exits (Linux; False elsewhere).  The
    kernel ties this to the parent *thread* that forked us: call it only in processes
    started from a thread that lives as long as the parent (the main thread)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _release_forkserver_pipe() -> None:
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        os.close(fd)
        server._forkserver_alive_fd = None


def die_with_parent(alive) -> None:
    """Called first in a worker (see the module doc); ``alive`` from :func:`parent_alive_pipe`."""
    _release_forkserver_pipe()
    kill_me_with_parent()
    threading.Thread(target=_exit_at_eof, args=(alive,), daemon=True, name="parent-watch").start()
