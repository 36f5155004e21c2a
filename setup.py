# The C hot paths (src/emsan/native/) are compiled by cffi at install time, and emsan's own
# libunicorn (engine/: the pinned Unicorn sdist with engine/patches/ applied) is built, or taken
# from its cache, and installed as emsan/machine/_engine/.
import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import SetupError

ROOT = Path(__file__).resolve().parent


class build_py_with_engine(build_py):
    """build_py, plus the engine next to emsan.machine (a failed engine build fails the install)."""

    def run(self):
        super().run()
        spec = importlib.util.spec_from_file_location("emsan_engine_build", ROOT / "engine" / "build.py")
        engine_build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(engine_build)
        out = Path(self.build_lib) / "emsan" / "machine" / "_engine"
        try:
            m = engine_build.build(out, say=lambda msg: print(msg, file=sys.stderr, flush=True))
        except engine_build.EngineBuildError as e:
            raise SetupError(f"emsan: building the Unicorn engine failed: {e}") from None
        print(f"emsan engine: {m['engine']} ({', '.join(p['name'] for p in m['patches'])})",
              file=sys.stderr, flush=True)


setup(cffi_modules=["src/emsan/native/build.py:ffibuilder"], cmdclass={"build_py": build_py_with_engine})
