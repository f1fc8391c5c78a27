"""Named points where a test can make the pipeline die as if SIGKILLed (crash-safety tests).

``PIPELINE_CRASH_AT=<name>`` kills the process with SIGKILL when it reaches that point;
unset (always, outside tests) it does nothing. The names are listed in POINTS.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "mid-extract",       # some pages landed, more to fetch
    "after-extract",     # every page landed, nothing built
    "mid-build",         # inside the build transaction, some models rebuilt
    "before-publish",    # every model rebuilt and tested, the commit not yet done
    "mid-export",        # the new document written to its temp file, not yet renamed
    "after-export",      # the new document in place, the run not yet marked succeeded
)


def crash_point(name: str) -> None:
    if os.environ.get("PIPELINE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
