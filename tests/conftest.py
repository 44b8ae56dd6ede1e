import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import env  # noqa: E402, F401  (TensorFlow's environment defaults, set once in env/__init__.py)


def pytest_configure(config):
    # Third-party deprecation chatter (TensorFlow's __array__, SWIG types in box2d/vizdoom) hides real warnings.
    config.addinivalue_line("filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword")
    config.addinivalue_line("filterwarnings", "ignore:builtin type .* has no __module__ attribute")
    config.addinivalue_line("filterwarnings", "ignore:distutils Version classes are deprecated")
