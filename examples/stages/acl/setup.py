"""Builds port_acl.pyx against whatever tapengine is installed: its .pxd files and headers are
found through sys.path, as for any Cython project that cimports an installed package."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize([Extension("port_acl", ["port_acl.pyx"])]))
