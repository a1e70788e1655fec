"""modcam: a daemon and library for detachable camera modules."""
