"""Build the Cython core (fastgw/_core/*.pyx). A missing compiler or Cython is a build error:
fastgw never ships a silently slow pure-Python fallback.

The build says what it compiles and how long each module took, even under `-q` (pip and `make` are
otherwise silent for the minute or two the C compiler needs): one line per module on stderr."""
import os
import re
import sys
import time
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
CORE = HERE / "fastgw" / "_core"
# A .pyx that another one includes (worker.pyx includes the data-plane modules whose types refer to one
# another: one extension, see docs/architecture.md) is compiled there, not as an extension of its own.
INCLUDED = {name for p in CORE.glob("*.pyx") for name in re.findall(r'^include "([^"]+)"', p.read_text(), re.M)}
extensions = [
    Extension(f"fastgw._core.{p.stem}", [str(p.relative_to(HERE))], extra_compile_args=["-O2"])
    for p in sorted(CORE.glob("*.pyx")) if p.name not in INCLUDED
]


class build_ext_progress(build_ext):  # noqa: N801 (setuptools' command naming)
    """build_ext that reports each module: compiled (with its time) or already up to date."""

    def build_extensions(self) -> None:
        self._done = 0
        print(f"fastgw: compiling the core: {len(self.extensions)} modules (worker, the data plane, is the largest: about a "
              "minute of C compiling on 2 cores; up-to-date modules are skipped)", file=sys.stderr, flush=True)
        super().build_extensions()

    def build_extension(self, ext: Extension) -> None:
        start = time.monotonic()
        target = Path(self.get_ext_fullpath(ext.name))
        before = target.stat().st_mtime if target.exists() else None
        super().build_extension(ext)
        self._done += 1
        after = target.stat().st_mtime if target.exists() else None
        what = "up to date" if before is not None and before == after else f"built in {time.monotonic() - start:.1f}s"
        print(f"fastgw:   [{self._done}/{len(self.extensions)}] {ext.name}: {what}", file=sys.stderr, flush=True)


# FASTGW_SKIP_CORE=1 (the Makefile's editable install): no extensions. pip builds an editable install's
# extensions in a temporary directory that the editable package never imports (its wheel holds only the
# path hook), so compiling there cost CI two minutes for nothing; `make compile` builds them in place.
SKIP_CORE = os.environ.get("FASTGW_SKIP_CORE") == "1"
if SKIP_CORE:
    setup()
else:
    # Cython prints "[i/N] Cythonizing X" for each changed file; say first what that step is.
    print("fastgw: Cython: translating changed .pyx files to C (worker.pyx with the modules it includes takes about 30 s)", file=sys.stderr, flush=True)
    setup(
        cmdclass={"build_ext": build_ext_progress},
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
