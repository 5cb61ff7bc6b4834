"""The errors every room raises, in a leaf of their own (it imports nothing of archbench).

- `UserError`: bad input from a user (a name, a value, a file). The CLI prints it as one line
  on stderr and exits with status 2, never a traceback.
- `Unsupported`: a cell this machine or strategy cannot run (a sharding strategy with no form
  for the model, cuDNN attention off an NVIDIA GPU). Models raise it at trace time; the
  engine records the cell with status "unsupported" and a one-line reason, not as an error.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from a user (a name, a value, a file): the CLI prints it as one line, exit 2."""


class Unsupported(Exception):
    """A cell this machine or strategy cannot run: recorded with status "unsupported" and a
    one-line reason, never an error."""


class UnknownNameError(UserError, KeyError):
    """An architecture, size or other name that is not registered; the message lists valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


def unknown(what: str, name: str, valid) -> UnknownNameError:
    """The error for an unknown `what` called `name`, listing the `valid` names."""
    return UnknownNameError(f"unknown {what} {name!r}; valid: {', '.join(valid)}")
