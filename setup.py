"""Build the fused CPU kernel of the closed-form Hessian (see ``csrc/hessian_contract.cc``).

Everything else about the package is in ``pyproject.toml``. The kernel is an XLA FFI handler
compiled against the FFI headers that jaxlib ships. Nothing in the build depends on the CPU it
runs on, so a wheel or an image built on one machine runs on any other of its architecture: the
one source is compiled once for the architecture's baseline (``jaxjac._hessian_contract``;
``-march=x86-64`` on x86-64, whatever a distribution's compiler defaults to) and, on x86-64, once
more for each wider ISA level (``jaxjac._hessian_contract_x86_64_v3``: AVX2 and FMA;
``_x86_64_v4``: AVX-512). :mod:`jaxjac._hessian_kernel` loads the widest that the CPU runs.

Every module is optional: where one does not compile (no C++ compiler, a compiler without GCC's
vector extensions or without an ISA level), the install goes on without it, and without any the
Hessian takes XLA's route (and says so once, at its first use). ``python -m build`` makes the
sdist and, from it, a wheel that carries every module this machine compiled, so that installing
the wheel needs no compiler.
"""

import os
import platform

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -g0 overrides the -g of Python's own CFLAGS: the debug information would be 95% of each module.
COMMON = ["-std=c++17", "-O3", "-ffp-contract=fast", "-g0"]

# (module suffix, flags): the baseline first. -mtune=generic keeps the compiler's scheduling
# from following the build machine either.
X86_64 = [
    ("", ["-march=x86-64", "-mtune=generic"]),
    ("_x86_64_v3", ["-march=x86-64-v3", "-mtune=generic"]),
    ("_x86_64_v4", ["-march=x86-64-v4", "-mtune=generic"]),
]


def variants() -> list[tuple[str, list[str]]]:
    """``(module suffix, compiler flags)`` of each build of the kernel for this architecture."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return X86_64
    return [("", [])]


class BuildWithJaxlibHeaders(build_ext):
    """Adds jaxlib's include directory (``xla/ffi/api/ffi.h``), found at build time."""

    def build_extensions(self):
        """Build every module of the kernel with jaxlib's include directory added."""
        try:
            import jaxlib
        except ImportError:  # only without build isolation: [build-system] requires jaxlib
            self.warn("jaxlib is not installed, so the fused Hessian kernel is not built")
            return
        include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
        for ext in self.extensions:
            ext.include_dirs.append(include)
        super().build_extensions()
        if not any(os.path.exists(self.get_ext_fullpath(ext.name)) for ext in self.extensions):
            self.warn(
                "no build of the fused Hessian kernel compiled (is a C++ compiler installed?): "
                "jaxjac installs without it and its Hessian takes XLA's route"
            )


setup(
    ext_modules=[
        Extension(
            f"jaxjac._hessian_contract{suffix}",
            sources=["csrc/hessian_contract.cc"],
            language="c++",
            extra_compile_args=COMMON + flags,
            optional=True,
        )
        for suffix, flags in variants()
    ],
    cmdclass={"build_ext": BuildWithJaxlibHeaders},
)
