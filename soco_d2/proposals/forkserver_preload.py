"""Imported only by the precompute's forkserver, as its last preload module
(``multiprocessing.set_forkserver_preload``): from here on the forkserver is
killed by the kernel when the process that started it exits
(:mod:`soco_d2.proposals.lifetime`)."""
from .lifetime import forkserver_dies_with_parent

forkserver_dies_with_parent()
