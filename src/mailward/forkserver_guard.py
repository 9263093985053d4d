"""Imported by multiprocessing's forkserver when it starts: the forkserver ends with the milter.

The forkserver runs nothing of ours otherwise; preloading this module is the
one hook multiprocessing offers into that process (see ``ScanPool``).
"""

from .lifetime import exit_with_parent

exit_with_parent()
