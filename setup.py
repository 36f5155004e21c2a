# The C hot paths (src/emsan/native/) are compiled by cffi at install time.
from setuptools import setup

setup(cffi_modules=["src/emsan/native/build.py:ffibuilder"])
