"""A child process served over JSON lines: one request a line in, one answer a line out.

The A-B-A checks keep each side of a comparison in a long-lived process of its own (the
PyTorch twin in `pytorch_ab`, one process per XLA option set in `xla_ab`), and ask it for a
block of timed rounds at a time.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from archbench.errors import UserError


class Served:
    """A child process: `ask(**request)` writes the request as one JSON line and reads one.

    Args:
      argv: the command that serves.
      ended: says, as one line, why the process stopped answering (its stdin or stdout closed).
      default: json.dumps's `default` for values JSON has no form for.
      popen: more of subprocess.Popen's arguments (env, cwd, stderr).
    """

    def __init__(self, argv: list[str], ended: Callable[[], str], default=None, **popen):
        self.ended, self.default = ended, default
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen
        )

    def ask(self, **request) -> dict:
        """The answer to `request`; UserError if the process has ended, RuntimeError with the
        error it answered."""
        try:
            self.process.stdin.write(json.dumps(request, default=self.default) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise UserError(self.ended())
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()
