"""Build the Cython data plane: every ``pyx/NAME.pyx`` becomes ``tapengine._NAME``.

The public ``.pxd`` files live beside their ``.pyx`` in ``pyx/``; ``src/tapengine/_NAME.pxd`` are
symlinks to them so that ``cimport tapengine._ring`` works for us and for other Cython projects.

``TAPENGINE_DEBUG=1`` builds with line tracing, C assertions and bounds checks switched on.
``TAPENGINE_ONLY=ring,batchio`` (development) rebuilds only the named extensions in place.
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
DEBUG = os.environ.get("TAPENGINE_DEBUG", "") not in ("", "0")
ONLY = {name for name in os.environ.get("TAPENGINE_ONLY", "").split(",") if name}

directives = {"language_level": 3, "embedsignature": True}
macros = []
cflags = ["-O2", "-fno-strict-aliasing"]
if DEBUG:
    directives |= {"linetrace": True, "boundscheck": True, "wraparound": True}
    macros += [("CYTHON_TRACE_NOGIL", "1")]
    cflags = ["-O0", "-g", "-UNDEBUG"]

extensions = [
    Extension(
        f"tapengine._{source.stem}",
        [str(source.relative_to(HERE))],
        include_dirs=["pyx"],
        define_macros=macros,
        extra_compile_args=cflags,
    )
    for source in sorted((HERE / "pyx").glob("*.pyx"))
    if not ONLY or source.stem in ONLY
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["src", "pyx"],
        compiler_directives=directives,
        force=DEBUG,
    ),
)
