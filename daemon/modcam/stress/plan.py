"""The seeded plan of a stress run: what each cycle does, and what each client does.

Everything random in a run comes from here, from generators derived from the
seed by name, so the same seed gives the same cycles and the same sequence of
client actions (only wall-clock interleaving differs between runs).
"""
from __future__ import annotations

import random

# Where an unplug can land. "autofocus" is an AutoFocus call in flight (the
# module streams binned frames for it); the others are the module's State.
TARGETS = ("off", "booting", "ready", "streaming", "capturing", "autofocus")
CLIENT_ACTIONS = (("claim", 2), ("release", 1), ("capture_dng", 3), ("capture_jpeg", 1),
                  ("lens", 1), ("autofocus", 1), ("pause", 2))


def _rng(seed: int, *name) -> random.Random:
    return random.Random(":".join(str(p) for p in (seed, *name)))


def serials(modules: int) -> list[str]:
    return [f"MCS{i:03d}" for i in range(modules)]


def cycle_plan(seed: int, cycles: int, modules: int = 1, boot_seconds: float = 0.3
               ) -> list[dict]:
    """One dict per cycle: module serial, target state, delays (seconds)."""
    rng = _rng(seed, "cycles")
    plan: list[dict] = []
    block: list[str] = []
    names = serials(modules)
    for index in range(cycles):
        if not block:            # each run of six cycles visits every target once
            block = list(TARGETS)
            rng.shuffle(block)
        target = block.pop()
        delay = {"off": rng.uniform(0.0, 0.005),
                 "booting": rng.uniform(0.1, 0.7) * boot_seconds,
                 "ready": rng.uniform(0.0, 0.01),
                 "streaming": rng.uniform(0.0, 0.03),
                 "capturing": rng.uniform(0.0, 0.01),
                 "autofocus": rng.uniform(0.0, 0.15)}[target]
        plan.append({"cycle": index, "serial": rng.choice(names), "target": target,
                     "delay": round(delay, 6), "settle": round(rng.uniform(0.0, 0.02), 6)})
    return plan


class ClientScript:
    """The endless, seeded sequence of one client's actions."""

    def __init__(self, seed: int, index: int):
        self._rng = _rng(seed, "client", index)
        self._names = [n for n, _ in CLIENT_ACTIONS]
        self._weights = [w for _, w in CLIENT_ACTIONS]

    def next(self) -> dict:
        r = self._rng
        action = r.choices(self._names, self._weights)[0]
        step = {"action": action, "pick": r.random()}
        if action == "lens":
            step["position"] = round(r.uniform(0.0, 3.0), 4)
        elif action.startswith("capture"):
            step["readout_mode"] = r.choice(("full", "full", "binned"))
        elif action == "pause":
            step["seconds"] = round(r.uniform(0.0, 0.05), 4)
        return step

    def take(self, count: int) -> list[dict]:
        return [self.next() for _ in range(count)]


def plan(seed: int, cycles: int, clients: int, modules: int = 1, boot_seconds: float = 0.3,
         client_steps: int = 20) -> dict:
    """The whole plan as data (what `--dry-run` prints): cycles and the first
    `client_steps` actions of every client."""
    return {"seed": seed, "cycles": cycle_plan(seed, cycles, modules, boot_seconds),
            "clients": [ClientScript(seed, k).take(client_steps) for k in range(clients)]}
