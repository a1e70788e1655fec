"""The virtual camera module: a software implementation of the module side of the link."""
