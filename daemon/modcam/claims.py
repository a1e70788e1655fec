"""Who holds a module awake: claims counted per caller's unique bus name.

A viewfinder calls Claim() once per open and Release() once per close; the
count is per bus name, and all of a name's claims go when it leaves the bus
(the manager learns that from NameOwnerChanged). `holders` is the Clients
property: the privacy indicator shows these names.
"""
from __future__ import annotations

from modcam.errors import InvalidArgument


class Claims:
    def __init__(self):
        self._counts: dict[str, int] = {}

    def add(self, sender: str) -> None:
        self._counts[sender] = self._counts.get(sender, 0) + 1

    def release(self, sender: str) -> None:
        count = self._counts.get(sender, 0)
        if count == 0:
            raise InvalidArgument(f"{sender} holds no claim on this module")
        if count == 1:
            del self._counts[sender]
        else:
            self._counts[sender] = count - 1

    def drop(self, sender: str) -> int:
        """Forget every claim of `sender` (it left the bus); how many there were."""
        return self._counts.pop(sender, 0)

    def count(self, sender: str) -> int:
        return self._counts.get(sender, 0)

    @property
    def holders(self) -> list[str]:
        """Bus names holding at least one claim, in the order they first claimed."""
        return list(self._counts)

    def __bool__(self) -> bool:
        return bool(self._counts)
