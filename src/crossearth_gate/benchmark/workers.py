"""One process per configuration, alive across rounds: its peak RSS is its own, its model is built once,
and the configurations take turns (never two at once), so the machine's drift lands in every one alike.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from ..util.errors import UserError


class Measurer(Protocol):
    """Built in the worker from picklable arguments; ``measure()`` once per round, ``finish()`` at the end."""

    def measure(self) -> dict[str, Any]: ...

    def finish(self) -> dict[str, Any]: ...


class Worker:
    """A spawned interpreter holding one ``Measurer``; its errors come back as errors here."""

    def __init__(self, factory: Callable[..., Measurer], *args: Any):
        ctx = mp.get_context("spawn")
        self._requests, self._results = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(target=_serve, args=(self._requests, self._results, factory, *args), daemon=True)
        self._proc.start()
        self._receive()  # built: the next worker's start does not compete with this one's

    def measure(self) -> dict[str, Any]:
        self._requests.put("measure")
        return self._receive()

    def finish(self) -> dict[str, Any]:
        """The final record (peak RSS over all rounds); the process then exits."""
        self._requests.put("finish")
        result = self._receive()
        self._proc.join()
        return result

    def kill(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()

    def _receive(self) -> Any:
        while True:
            try:
                status, payload = self._results.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError(f"benchmark process died with exit code {self._proc.exitcode}") from None
        if status == "user":
            raise UserError(payload)
        if status == "error":
            raise RuntimeError(f"benchmark process failed:\n{payload}")
        return payload


def _serve(requests: Any, results: Any, factory: Callable[..., Measurer], *args: Any) -> None:
    try:
        measurer = factory(*args)
        results.put(("ok", None))
        while True:
            request = requests.get()
            results.put(("ok", measurer.measure() if request == "measure" else measurer.finish()))
            if request == "finish":
                return
    except UserError as err:
        results.put(("user", str(err)))
    except BaseException:
        results.put(("error", traceback.format_exc()))
