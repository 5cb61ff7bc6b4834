"""How the `archbench` command ends: the errors a user can cause as one line and a status.

`main` runs every subcommand through `guarded`, and so does the child process of a supervised
multi-process job (archbench.cli.processes), which cannot return to `main`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from archbench.errors import UserError

USAGE = 2  # bad input: a UserError
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
BROKEN_PIPE = 141  # 128 + SIGPIPE


def guarded(call: Callable[[], int]) -> int:
    """`call()`'s exit status; a UserError is one line on stderr and USAGE, never a traceback
    (set ARCHBENCH_DEBUG=1 to see one), Ctrl-C is INTERRUPTED."""
    try:
        return call()
    except UserError as e:
        if os.environ.get("ARCHBENCH_DEBUG"):
            raise
        msg = str(e)
        print(msg if msg.startswith("archbench") else f"archbench: error: {msg}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("archbench: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # `archbench ... | head` closed the pipe: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
        return BROKEN_PIPE
