"""A plain (non-editable) install carries the twistd plugin and nothing that hides Twisted's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from twisted.trial.unittest import SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "sbc", "twisted")


class WheelInstallTests(SynchronousTestCase):
    def test_wheel_installs_the_twistd_plugin(self) -> None:
        work = os.path.abspath(self.mktemp())
        source = os.path.join(work, "src")
        os.makedirs(source)
        for name in SOURCES:
            path = os.path.join(REPO, name)
            if os.path.isdir(path):
                shutil.copytree(
                    path,
                    os.path.join(source, name),
                    ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"),
                )
            else:
                shutil.copy(path, source)
        wheels = os.path.join(work, "wheels")
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
        subprocess.run(
            [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source],
            check=True,
            capture_output=True,
        )
        [wheel] = os.listdir(wheels)
        with zipfile.ZipFile(os.path.join(wheels, wheel)) as archive:
            names = set(archive.namelist())
        self.assertIn("twisted/plugins/sbc_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("sbc/sip/__init__.py", names)

        target = os.path.join(work, "site")
        subprocess.run(
            [*pip, "install", "--no-deps", "--target", target, os.path.join(wheels, wheel)],
            check=True,
            capture_output=True,
        )
        # Run twistd from the installed copy only: not from this checkout.
        env = dict(os.environ, PYTHONPATH=target)
        probe = (
            f"import sys; sys.path = [p for p in sys.path if p not in ({REPO!r}, '')];"
            "from twisted.scripts.twistd import run; sys.argv = ['twistd', 'sbc', '--help']; run()"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True
        )
        self.assertIn("--check-config", result.stdout, result.stderr)
        self.assertTrue(os.path.exists(os.path.join(target, "twisted", "plugins", "dropin.cache")))


class ImportTests(SynchronousTestCase):
    """Every module of the package imports on the interpreter running the suite.

    The suite runs on CPython 3.11 and on PyPy 3.9 (``make trial-pypy``): a
    construct newer than Python 3.9 at module level (``X | Y`` outside an
    annotation, a possessive regular expression, ``enum.StrEnum``...) fails here
    by name, even in a module no other test imports.
    """

    def test_every_module_imports(self) -> None:
        import importlib
        import pkgutil

        import sbc

        names = [m.name for m in pkgutil.walk_packages(sbc.__path__, "sbc.")]
        self.assertGreater(len(names), 60)
        failed = {}
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as error:  # report every module that fails, not the first
                failed[name] = f"{type(error).__name__}: {error}"
        self.assertEqual(failed, {})
