"""The kernel the runner starts: its own stderr goes to a log file, not the user's terminal.

An ipykernel prints a transport warning on every start and, when the runner is interrupted
mid-cell, a ZMQError traceback as its sockets close under it: noise on the terminal, where
the runner's one line should be the last word. Cell errors and outputs still reach the runner
through Jupyter's messages; what the kernel itself prints is kept in the log (kept beside a
failed run's notebook).
"""

from __future__ import annotations

from pathlib import Path

from jupyter_client.manager import AsyncKernelManager


class LoggedKernelManager(AsyncKernelManager):
    log_path: Path | None = None  # set by the runner for each notebook it executes

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        if self.log_path is not None:
            kw["stderr"] = open(self.log_path, "ab")  # noqa: SIM115 (the kernel's process holds it)
        await super()._async_launch_kernel(kernel_cmd, **kw)
