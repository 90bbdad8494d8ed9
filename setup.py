"""The one C extension, optional: without a compiler replicator runs on walscan.scan_py."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("replicator._walscan", ["replicator/_walscan.c"], optional=True,
                             extra_compile_args=["-O2"])])
