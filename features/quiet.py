"""Quiet output by default; ``cslr-pipe --verbose`` (or CSLR_PIPE_VERBOSE=1) shows everything.

The setting lives in the environment so that worker processes (dask's, torchrun's) inherit it.
Native libraries (MediaPipe's C++ calculators, TensorFlow Lite) log straight to file descriptor 2
through absl, which neither Python's logging nor GLOG_minloglevel / TF_CPP_MIN_LOG_LEVEL reach in
the MediaPipe wheel this project installs: :func:`native_stderr_silenced` points fd 2 at
/dev/null around the calls that log.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Iterator

VERBOSE_ENV = "CSLR_PIPE_VERBOSE"

_lock = threading.Lock()
_silencers = 0  # threads inside native_stderr_silenced(); fd 2 is restored when the last one leaves
_saved_stderr: int | None = None


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbose(verbose: bool) -> None:
    """Set the process-wide (and inherited) verbosity."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null inside the block (nothing changes when verbose).

    Safe across threads: fd 2 is redirected by the first thread to enter and restored by the
    last to leave. Anything written to stderr meanwhile, from any thread, is lost.
    """
    global _silencers, _saved_stderr
    if is_verbose():
        yield
        return
    with _lock:
        if _silencers == 0:
            if sys.stderr is not None:
                sys.stderr.flush()
            _saved_stderr = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        _silencers += 1
    try:
        yield
    finally:
        with _lock:
            _silencers -= 1
            if _silencers == 0:
                os.dup2(_saved_stderr, 2)
                os.close(_saved_stderr)
                _saved_stderr = None
