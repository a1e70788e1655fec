# cffi cannot be declared in pyproject.toml yet: this file only carries cffi_modules.
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
