"""modcamd's D-Bus edge: thin adapters between Gio and the plain-Python model.

introspection.py loads the contract (dbus/*.xml); exported.py registers an
object from it and answers calls now or later (Gio invocations, fd lists);
objects.py holds the manager, module and ObjectManager adapters.
"""
