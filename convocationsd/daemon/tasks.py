"""Background tasks with an owner. Whatever starts a task that no request waits for keeps it in a TaskSet,
and its ``close`` cancels the set and waits for each task to end: after ``Daemon.stop`` nothing of ours runs
on the loop (tests/integration/test_daemon_stop.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Runs ``coro`` as a task of this set (in the caller's context, as ``create_task`` does). A set that
        is closed takes no more: the coroutine is closed unrun and a cancelled task returned."""
        task = asyncio.get_running_loop().create_task(coro)
        if self.closed:
            task.cancel()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Cancels every task still running and waits until each has ended (a task that closes its own set
        is not waited for)."""
        self.closed = True
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
