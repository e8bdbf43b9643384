"""Build the fused CPU kernel of the closed-form Hessian (see ``csrc/hessian_contract.cc``).

Everything else about the package is in ``pyproject.toml``. The kernel is an XLA FFI handler
compiled against the FFI headers that jaxlib ships, for the machine it is built on
(``-march=native``: the package is built where it runs, by ``pip install``). It is optional: where
it does not compile (no C++ compiler, a compiler without GCC's vector extensions), the install
goes on and :mod:`jaxjac._hessian_kernel` reports it unavailable, so the Hessian takes XLA's path.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildWithJaxlibHeaders(build_ext):
    """Adds jaxlib's include directory (``xla/ffi/api/ffi.h``), found at build time."""

    def build_extensions(self):
        import jaxlib

        include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
        for ext in self.extensions:
            ext.include_dirs.append(include)
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "jaxjac._hessian_contract",
            sources=["csrc/hessian_contract.cc"],
            language="c++",
            extra_compile_args=["-std=c++17", "-O3", "-march=native", "-ffp-contract=fast"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildWithJaxlibHeaders},
)
