"""Routing policies as Twisted plugins: the stock ones and a third-party dropin.

Tests that put a plugin directory on ``sys.path`` run in a fresh interpreter,
so this process's ``sys.path`` and module table stay clean.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import sbc
import sbc.plugins
from sbc.config import SbcConfig
from sbc.interfaces import IRoutingPolicy, IRoutingPolicyFactory
from sbc.routing import STOCK_FACTORIES, available_policies

REPO = Path(sbc.__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "policy_plugin"
STOCK_NAMES = {"default", "round-robin", "least-calls"}

PROBE = """
import json, sys
from twisted.plugin import getPlugins
from zope.interface.verify import verifyObject
import sbc.plugins
from sbc.adjacencies import AdjacencyTable
from sbc.config import parse_config
from sbc.errors import ConfigError
from sbc.interfaces import IRoutingPolicy, IRoutingPolicyFactory
from sbc.routing import RouteKey, Router, available_policies

policies = available_policies()
result = {
    "names": sorted(policies),
    "default_module": type(policies["default"].make_policy(None)).__module__,
    "plugins_named_default": sum(
        f.name == "default" for f in getPlugins(IRoutingPolicyFactory, sbc.plugins)
    ),
}
for name, factory in policies.items():
    verifyObject(IRoutingPolicyFactory, factory)
cfg = parse_config(sys.argv[1])
try:
    router = Router.from_config(cfg)
except ConfigError as e:
    result["error"] = e.message
else:
    verifyObject(IRoutingPolicy, router.policy)
    result["policy"] = router.policy.name
    decision = router.route(
        RouteKey("in", "example.com", None, True), AdjacencyTable(cfg.adjacencies)
    )
    result["route"] = [d.adjacency for d in decision.destinations]
print(json.dumps(result))
"""

CONFIG = """
sbc plug
 sbe
  adjacency sip in
   signaling-address ipv4 127.0.0.1
   signaling-port 5060
   security trusted-unencrypted
   attach
  adjacency sip plain
   signaling-address ipv4 127.0.0.1
   signaling-port 5062
   security trusted-unencrypted
   attach
  adjacency sip tls
   signaling-address ipv4 127.0.0.1
   signaling-port 5061
   security trusted-encrypted
   attach
  routing-policy {policy}
"""


class StockPluginTests(SynchronousTestCase):
    def test_get_plugins_finds_stock_policies(self) -> None:
        """getPlugins over sbc.plugins finds the three stock factories, each verified."""
        found = {f.name: f for f in getPlugins(IRoutingPolicyFactory, sbc.plugins)}
        self.assertTrue(set(found) >= STOCK_NAMES, sorted(found))
        for name in STOCK_NAMES:
            verifyObject(IRoutingPolicyFactory, found[name])
            policy = found[name].make_policy(SbcConfig("s"))
            self.assertTrue(verifyObject(IRoutingPolicy, policy))
            self.assertEqual(policy.name, name)

    def test_available_policies(self) -> None:
        """available_policies maps names to the stock factory objects themselves."""
        policies = available_policies()
        for factory in STOCK_FACTORIES:
            self.assertIs(policies[factory.name], factory)

    def test_plugin_package_is_extensible(self) -> None:
        """sbc.plugins spans every sbc/plugins directory on sys.path (Twisted's pattern)."""
        self.assertIn(str(REPO / "sbc" / "plugins"), [str(Path(p)) for p in sbc.plugins.__path__])
        self.assertGreater(len(sbc.plugins.__path__), 1)


class DropinTests(SynchronousTestCase):
    def probe(self, policy: str, *extra_path: Path) -> dict[str, object]:
        """Run PROBE in a fresh interpreter with ``extra_path`` first on sys.path."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), str(REPO)])
        run = subprocess.run(
            [sys.executable, "-c", PROBE, CONFIG.format(policy=policy)],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.mktemp_dir(),
            timeout=60,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        result: dict[str, object] = json.loads(run.stdout)
        return result

    def mktemp_dir(self) -> Path:
        path = Path(self.mktemp()).resolve()
        path.mkdir(parents=True)
        return path

    def example_copy(self) -> Path:
        """A copy of examples/policy_plugin (plugin discovery writes a cache beside it)."""
        target = self.mktemp_dir() / "policy_plugin"
        shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.cache"))
        return target

    def test_without_example(self) -> None:
        """Without the example on sys.path, prefer-tls is unknown: a ConfigError."""
        result = self.probe("prefer-tls")
        self.assertEqual(set(result["names"]), STOCK_NAMES)  # type: ignore[arg-type]
        self.assertIn("unknown routing-policy 'prefer-tls'", result["error"])  # type: ignore[arg-type]

    def test_default_order(self) -> None:
        """The control: the default policy keeps configuration order (plain before tls)."""
        result = self.probe("default")
        self.assertEqual(result["route"], ["plain", "tls"])

    def test_example_directory_on_sys_path(self) -> None:
        """The example's directory on sys.path: prefer-tls is found, selected, and reorders."""
        result = self.probe("prefer-tls", self.example_copy())
        self.assertEqual(set(result["names"]), STOCK_NAMES | {"prefer-tls"})  # type: ignore[arg-type]
        self.assertEqual(result["policy"], "prefer-tls")
        self.assertEqual(result["route"], ["tls", "plain"])

    def test_example_installed_with_pip(self) -> None:
        """pip install of the example (into a target directory) makes it discoverable."""
        source = self.example_copy()
        target = self.mktemp_dir() / "site"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "--target",
                str(target),
                str(source),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertTrue((target / "sbc" / "plugins" / "prefer_tls.py").exists())
        self.assertFalse((target / "sbc" / "plugins" / "__init__.py").exists())
        result = self.probe("prefer-tls", target)
        self.assertEqual(result["route"], ["tls", "plain"])

    def test_plugin_cannot_replace_stock_name(self) -> None:
        """A plugin that calls itself 'default' is found but the stock policy keeps the name."""
        root = self.mktemp_dir()
        plugins = root / "sbc" / "plugins"
        plugins.mkdir(parents=True)
        (plugins / "impostor.py").write_text(
            textwrap.dedent(
                """
                from sbc.routing import PolicyFactory, RoundRobinPolicy

                impostor = PolicyFactory("default", "not the real one", RoundRobinPolicy)
                """
            )
        )
        result = self.probe("default", root)
        self.assertEqual(result["plugins_named_default"], 2)
        self.assertEqual(result["default_module"], "sbc.routing.policies")
        self.assertEqual(result["route"], ["plain", "tls"])
