"""The set of attached modules, keyed by serial, as udev reports them.

Plain Python: the udev watcher calls add()/remove(), the bus adapter is told
through `on_added`/`on_removed` callbacks. An add for a module already here
is a no-op (coldplug and add overlap by design), unless its control path
changed (a `change` event), which reconnects. A remove for an unknown module
is ignored: duplicates are normal.
"""
from __future__ import annotations

import logging

from modcam import journal
from modcam.errors import Removed
from modcam.link.module_info import ModuleInfo
from modcam.module import Module

log = logging.getLogger("modcam.manager")


class Manager:
    def __init__(self, config, executor, on_added, on_removed, on_changed):
        self.config, self.executor = config, executor
        self.on_added, self.on_removed, self.on_changed = on_added, on_removed, on_changed
        self.modules: dict[str, Module] = {}      # serial -> module, in arrival order

    def add(self, info: ModuleInfo) -> None:
        current = self.modules.get(info.serial)
        if current is not None:
            if current.info.control_path == info.control_path and \
                    current.info.sys_path == info.sys_path:
                return
            log.info("module %s changed (%s): replacing it", info.serial, info.control_path,
                     extra=journal.fields(serial=info.serial))
            self.remove(info.serial, current.info.sys_path)
        module = Module(info, self.config, self.executor,
                        lambda changed, s=info.serial: self._changed(s, changed))
        self.modules[info.serial] = module
        log.info("module %s arrived at %s", info.serial, info.sys_path,
                 extra=journal.fields(serial=info.serial, state=module.state))
        self.on_added(module)
        module.attach()

    def _changed(self, serial: str, changed: dict) -> None:
        module = self.modules.get(serial)
        if module is not None and not module.removed:
            self.on_changed(module, changed)

    def remove(self, serial: str | None, sys_path: str) -> None:
        if serial is None or serial not in self.modules:
            serial = next((s for s, m in self.modules.items() if m.info.sys_path == sys_path),
                          None)
        module = self.modules.get(serial) if serial else None
        if module is None or (module.info.sys_path != sys_path and sys_path):
            log.debug("remove for %s (%s): not a module we have", serial, sys_path)
            return
        del self.modules[serial]
        module.remove()
        log.info("module %s removed", serial, extra=journal.fields(serial=serial))
        self.on_removed(module)

    def client_vanished(self, name: str) -> None:
        for module in list(self.modules.values()):
            module.client_vanished(name)

    def find(self, serial: str) -> Module | None:
        return self.modules.get(serial)

    def shutdown(self) -> None:
        """Power every module down and forget them (SIGTERM)."""
        for module in list(self.modules.values()):
            # Pending calls first: the power-off below makes the module end a
            # boot or a still ("module is off"), and that must not be their answer.
            module.fail_pending(Removed(f"module {module.serial} is unavailable: "
                                        "modcamd is stopping"))
            if module.channel is not None and module.state in ("booting", "ready", "streaming",
                                                               "capturing"):
                try:
                    module.channel.request("power", on=False, timeout=1.0)
                except Exception as exc:    # noqa: BLE001 - best effort while stopping
                    log.warning("module %s: cannot power down: %s", module.serial, exc)
            module.remove("is unavailable: modcamd is stopping")
        self.modules.clear()
