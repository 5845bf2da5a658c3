"""The kernel the runner starts, and how the runner ends it.

An ipykernel prints a transport warning on every start and, when the runner is interrupted
mid-cell, a ZMQError traceback as its sockets close under it: noise on the terminal, where
the runner's one line should be the last word. Cell errors and outputs still reach the runner
through Jupyter's messages; what the kernel itself prints is kept in the log (kept beside a
failed run's notebook).

Ctrl-C belongs to the runner. jupyter_client already starts the kernel in a session of its
own, so a terminal's Ctrl-C reaches only the runner. There papermill runs each cell as an
asyncio task and, on KeyboardInterrupt, shuts the kernel down while that task is still
pending: the task then wakes to a dead kernel and its error is logged at exit ("Kernel died",
"Task exception was never retrieved"). `RunnerEngine` cancels and collects the cell's task
first, so the kernel is shut down with nothing left waiting on it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.log import logger

ENGINE = "mnist-lab"
SETTLE_SECONDS = 10  # how long a cancelled cell task may take to finish; it needs no kernel to


class LoggedKernelManager(AsyncKernelManager):
    log_path: Path | None = None  # set by the runner for each notebook it executes

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        if self.log_path is not None:
            kw["stderr"] = open(self.log_path, "ab")  # noqa: SIM115 (the kernel's process holds it)
        await super()._async_launch_kernel(kernel_cmd, **kw)


def settle_pending_tasks() -> None:
    """Cancel the tasks left on this thread's event loop and collect how they ended."""
    from jupyter_core.utils import ensure_event_loop

    loop = ensure_event_loop()
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=SETTLE_SECONDS))
    for task in pending:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: asyncio logs nothing about it at exit


class _RunnerClient(PapermillNotebookClient):
    def execute_cell(self, *args, **kwargs):
        try:
            return super().execute_cell(*args, **kwargs)
        except KeyboardInterrupt:  # before the kernel is shut down on the way out
            settle_pending_tasks()
            raise


class RunnerEngine(NBClientEngine):
    """papermill's own engine (the same arguments, the same client) with `_RunnerClient`."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                 start_timeout=60, execution_timeout=None, **kwargs):
        for unused in ("input_path", "startup_timeout"):
            kwargs.pop(unused, None)
        timeout = kwargs.pop("timeout", None)
        return _RunnerClient(nb_man, timeout=execution_timeout or timeout, startup_timeout=start_timeout,
                             kernel_name=kernel_name, log=logger, log_output=log_output, stdout_file=stdout_file,
                             stderr_file=stderr_file, **kwargs).execute()


papermill_engines.register(ENGINE, RunnerEngine)
