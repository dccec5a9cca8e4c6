"""Build the Cython core (fastgw/_core/*.pyx). A missing compiler or Cython is a build error:
fastgw never ships a silently slow pure-Python fallback."""
import re
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
CORE = HERE / "fastgw" / "_core"
# A .pyx that another one includes (worker.pyx includes the data-plane modules whose types refer to one
# another: one extension, see docs/architecture.md) is compiled there, not as an extension of its own.
INCLUDED = {name for p in CORE.glob("*.pyx") for name in re.findall(r'^include "([^"]+)"', p.read_text(), re.M)}
extensions = [
    Extension(f"fastgw._core.{p.stem}", [str(p.relative_to(HERE))], extra_compile_args=["-O2"])
    for p in sorted(CORE.glob("*.pyx")) if p.name not in INCLUDED
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            # Index checks stay on globally: config-load code uses Python idioms such as parts[-1],
            # which wraparound=False silently turns into out-of-bounds reads. Hot loops use C
            # pointers, or switch the checks off locally with a decorator.
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
