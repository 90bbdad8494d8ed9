"""The C extensions, both optional: without a compiler replicator runs on their Python
fallbacks (walscan.scan_py; the fence retrying through SQLite's busy handler)."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("replicator._walscan", ["replicator/_walscan.c"], optional=True, extra_compile_args=["-O2"]),
    Extension("replicator._shmlock", ["replicator/_shmlock.c"], optional=True, extra_compile_args=["-O2"]),
])
