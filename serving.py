"""gunicorn's hooks for ``python app.py`` (``--config <this file>``): what a worker does when it
is told to stop at once.

gunicorn reads this file before it changes into the project's folder, from wherever the user
started ``python app.py``: so nothing of the service is imported here until a hook runs (in a
worker, where the app and everything it imports are loaded already).
"""

from __future__ import annotations

import signal
import time
from typing import Any

# Ctrl-C reaches a worker twice, from the terminal and from the master, and gunicorn runs its
# quit handler (this hook, 0.1 s of grace, then exit) once for each.
_stopping = False


def worker_int(worker: Any) -> None:
    """Ctrl-C (SIGINT, or SIGQUIT from the master): every open stream gets an error event while
    the worker can still write (gunicorn gives its greenlets 0.1 s before it exits) instead of
    a silent cut, so a client can tell "stopped" from "finished"."""
    global _stopping
    if _stopping:
        # The second handler must not exit again while the first one's exit is under way (that
        # prints a traceback): it waits, and the process ends under it.
        time.sleep(60)
        return
    _stopping = True
    from converters import ApiError
    from keepalive import end_open_replies

    for stop_at_once in (signal.SIGINT, signal.SIGQUIT):  # no third handler
        signal.signal(stop_at_once, signal.SIG_IGN)
    end_open_replies(
        ApiError(
            "The service is stopping; the reply was cut short. Retry the request.",
            status=503,
            type="server_error",
            code="service_stopping",
        )
    )
