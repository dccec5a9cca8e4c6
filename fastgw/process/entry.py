"""The worker process's entry point: the supervisor runs `python -P <this file> ARGS`
(fastgw/process/supervisor.py).

Which fastgw a worker runs is decided here: the package this file belongs to, found by the file's own
path, never by sys.path. A `fastgw/` folder in the working directory (an uncompiled checkout, from which
someone runs the installed `fastgw`) or anywhere earlier on sys.path would otherwise be imported instead
of the package the supervisor runs, and every worker would fail to start. `-P` keeps the working
directory (and this file's folder) off sys.path for every other import too. Then fastgw.process.worker.main
runs with ARGS.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _import_own_package() -> None:
    package = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("fastgw", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastgw"] = module
    spec.loader.exec_module(module)


if __name__ == "__main__":
    _import_own_package()
    from fastgw.process.worker import main
    sys.exit(main())
