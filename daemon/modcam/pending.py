"""A result that arrives later, on the main loop: modcamd's one async primitive.

Requests that wait for the module (a Claim that hides a 2 s boot, a still,
an autofocus cycle) return a Pending at once; the D-Bus adapter answers the
caller when it settles, so the main loop never blocks. Single-threaded by
design: resolve and reject are only called from the main loop (worker
threads hand results back with GLib.idle_add first).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger("modcam.pending")


class Pending:
    """Settles once, with a value or an exception; callbacks run on settling
    (or at once if it has settled already). Settling twice is ignored, so a
    removal that fails everything and a late reply can both try safely."""

    __slots__ = ("what", "done", "value", "error", "_callbacks")

    def __init__(self, what: str = ""):
        self.what = what
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._callbacks: list[Callable[[Pending], None]] = []

    @classmethod
    def resolved(cls, value=None, what: str = "") -> "Pending":
        p = cls(what)
        p.resolve(value)
        return p

    @classmethod
    def rejected(cls, error: BaseException, what: str = "") -> "Pending":
        p = cls(what)
        p.reject(error)
        return p

    def add_done_callback(self, callback: Callable[["Pending"], None]) -> "Pending":
        if self.done:
            self._run(callback)
        else:
            self._callbacks.append(callback)
        return self

    def then(self, on_value: Callable[[Any], Any], on_error=None) -> "Pending":
        """A new Pending settled by on_value(value) (which may itself return a
        Pending to chain on) or by this one's error (through on_error if given)."""
        out = Pending(self.what)

        def step(p: Pending) -> None:
            try:
                if p.error is not None:
                    if on_error is None:
                        out.reject(p.error)
                        return
                    result = on_error(p.error)
                else:
                    result = on_value(p.value)
            except Exception as exc:    # noqa: BLE001 - becomes the chained error
                out.reject(exc)
                return
            if isinstance(result, Pending):
                result.add_done_callback(lambda r: out.reject(r.error) if r.error is not None
                                         else out.resolve(r.value))
            else:
                out.resolve(result)
        self.add_done_callback(step)
        return out

    def resolve(self, value=None) -> bool:
        return self._settle(value, None)

    def reject(self, error: BaseException) -> bool:
        return self._settle(None, error)

    def _settle(self, value, error) -> bool:
        if self.done:
            return False
        self.done, self.value, self.error = True, value, error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._run(callback)
        return True

    def _run(self, callback) -> None:
        try:
            callback(self)
        except Exception:   # noqa: BLE001 - one bad callback must not stop the others
            log.exception("a callback of %s failed", self.what or "a pending request")
