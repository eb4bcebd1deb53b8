"""Build the Cython data plane: every ``pyx/NAME.pyx`` becomes ``tapengine._NAME``.

The Cython sources stay in ``pyx/``. What a ``cimport`` of tapengine needs is *copied* into the
package at build time (never linked), so an installed wheel carries its whole C-level API:

    pyx/NAME.pxd beside NAME.pyx        ->  tapengine/_NAME.pxd   (the module's public API)
    pyx/NAME.pxd without a .pyx         ->  tapengine/NAME.pxd    (inline helpers: syscall, netorder)
    pyx/includes/*.pxd, *.h             ->  tapengine/includes/   (system externs, constants, uring.h)

Our own extensions compile against a staged copy of that tree (``build/cython-api/``); the wheel
gets the same files (``build_py``), and an in-place or editable build copies them beside the
extensions in ``src/tapengine/`` (ignored by git). Cythonizing happens in ``build_ext`` (uvloop's
model), so making an sdist runs no Cython; the sdist ships ``.pyx``/``.pxd``/``.h``, not ``.c``.

``TAPENGINE_DEBUG=1`` builds with line tracing, C assertions and bounds checks switched on.
``TAPENGINE_SANITIZE=1`` adds AddressSanitizer and UBSan (``make asan`` builds so into build/asan).
``TAPENGINE_ONLY=ring,batchio`` (development) rebuilds only the named extensions in place.
"""

import os
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.build_py import build_py as _build_py

HERE = Path(__file__).parent
PYX = HERE / "pyx"
STAGE = HERE / "build" / "cython-api"
DEBUG = os.environ.get("TAPENGINE_DEBUG", "") not in ("", "0")
SANITIZE = os.environ.get("TAPENGINE_SANITIZE", "") not in ("", "0")
ONLY = {name for name in os.environ.get("TAPENGINE_ONLY", "").split(",") if name}

directives = {"language_level": 3, "embedsignature": True}
macros = []
cflags = ["-O2", "-fno-strict-aliasing"]
if DEBUG:
    directives |= {"linetrace": True, "boundscheck": True, "wraparound": True}
    macros += [("CYTHON_TRACE_NOGIL", "1")]
    cflags = ["-O0", "-g", "-UNDEBUG"]
sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer", "-g"] if SANITIZE else []


def cython_api() -> dict[str, Path]:
    """Every file a ``cimport`` of tapengine needs: path inside the package tree -> source."""
    files = {"tapengine/__init__.pxd": HERE / "src" / "tapengine" / "__init__.pxd"}
    for pxd in sorted(PYX.glob("*.pxd")):
        name = f"_{pxd.stem}" if pxd.with_suffix(".pyx").exists() else pxd.stem
        files[f"tapengine/{name}.pxd"] = pxd
    for path in sorted((PYX / "includes").iterdir()):
        if path.suffix in (".pxd", ".h"):
            files[f"tapengine/includes/{path.name}"] = path
    return files


def copy_cython_api(root: Path) -> None:
    """Copy the C-level API under ``root`` (a directory holding the ``tapengine`` package)."""
    for relative, source in cython_api().items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or not target.samefile(source):
            shutil.copy2(source, target)  # keeps the mtime: cythonize rebuilds what changed


class build_py(_build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install finds them in src/ (build_ext)
            copy_cython_api(Path(self.build_lib))


class build_ext(_build_ext):
    def finalize_options(self) -> None:
        # Cythonize first: setuptools' own finalize_options prepares the (then C) extensions.
        shutil.rmtree(STAGE, ignore_errors=True)  # nothing stale: exactly what pyx/ holds now
        copy_cython_api(STAGE)
        from Cython.Build import cythonize

        self.distribution.ext_modules[:] = cythonize(
            self.distribution.ext_modules,
            include_path=[str(STAGE)],
            compiler_directives=directives,
            force=DEBUG or bool(self.force),
        )
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1
        super().finalize_options()

    def run(self) -> None:
        super().run()
        if self.inplace or self.editable_mode:
            copy_cython_api(HERE / "src")


extensions = [
    Extension(
        f"tapengine._{source.stem}",
        [source.relative_to(HERE).as_posix()],
        define_macros=macros,
        extra_compile_args=cflags + sanitize,
        extra_link_args=sanitize,
    )
    for source in sorted(PYX.glob("*.pyx"))
    if not ONLY or source.stem in ONLY
]

setup(ext_modules=extensions, cmdclass={"build_py": build_py, "build_ext": build_ext})
