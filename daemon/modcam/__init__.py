"""modcam: a daemon and library for detachable camera modules."""

__version__ = "0.1.0"     # the same as pyproject.toml's (tests/unit/test_service.py checks)
