"""User errors: shown as one line per problem, exit code 2, never a traceback."""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2
TRAINING_FAILED_EXIT_CODE = 1
# SIGTERM (preemption): training stopped after committing a checkpoint; `--resume` continues it.
PREEMPTED_EXIT_CODE = 3
INTERRUPTED_EXIT_CODE = 130  # a second Ctrl-C: stopped at once (128 + SIGINT, as shells report)


class UserError(Exception):
    """A problem with what the user gave us (config, files, paths, cluster request).

    Each message names the field or file it is about; several can be reported together.
    """

    def __init__(self, *messages: str) -> None:
        self.messages = [m for m in messages if m]
        super().__init__("; ".join(self.messages))
