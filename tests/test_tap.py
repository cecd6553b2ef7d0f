"""``twistd sbc``: options, the service builder, and the real twistd process."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sbc import tap
from sbc.errors import ConfigError
from sbc.service import SbcService
from tests.support.peers import free_port
from tests.support.pki import lab_pki
from tests.transport.fakes import Reactor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB_CONF = os.path.join(REPO, "examples", "lab.conf")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def options(*argv: str) -> tap.Options:
    parsed = tap.Options()
    parsed.parseOptions(list(argv))
    return parsed


class OptionsTests(SynchronousTestCase):
    def test_config_required(self) -> None:
        self.assertRaises(usage.UsageError, options)

    def test_tls_options_go_together(self) -> None:
        self.assertRaises(usage.UsageError, options, "--config", LAB_CONF, "--certificate", "c.pem")
        self.assertRaises(
            usage.UsageError, options, "--config", LAB_CONF, "--certificate", "c.pem",
            "--private-key", "k.pem",
        )  # fmt: skip

    def test_workers(self) -> None:
        self.assertEqual(options("--config", LAB_CONF)["workers"], 1)
        self.assertEqual(options("--config", LAB_CONF, "--workers", "3")["workers"], 3)
        self.assertGreaterEqual(options("--config", LAB_CONF, "--workers", "auto")["workers"], 1)
        self.assertEqual(options("--config", LAB_CONF, "--workers", "64")["workers"], 64)
        for bad in ("0", "-1", "two", "65"):
            self.assertRaises(usage.UsageError, options, "--config", LAB_CONF, "--workers", bad)

    def test_tls_files(self) -> None:
        parsed = options(
            "--config", LAB_CONF, "--certificate", "c.pem", "--private-key", "k.pem",
            "--ca-certificates", "ca.pem",
        )  # fmt: skip
        tls = parsed.tls_files()
        assert tls is not None
        self.assertEqual(
            (tls.certificate, tls.private_key, tls.ca_certificates), ("c.pem", "k.pem", "ca.pem")
        )
        self.assertIsNone(options("--config", LAB_CONF).tls_files())

    def test_default_cli_endpoint_beside_config(self) -> None:
        expected = "unix:" + os.path.join(REPO, "examples", "sbc.cli") + ":mode=600"
        self.assertEqual(options("--config", LAB_CONF).cli_endpoint(), expected)
        self.assertEqual(options("--config", LAB_CONF, "--cli", "tcp:9").cli_endpoint(), "tcp:9")


class BuildServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = lab_pki(self.mktemp())
        self.tls_args = [
            "--certificate", self.pki["sbc"], "--private-key", self.pki["sbc-key"],
            "--ca-certificates", self.pki["ca"],
        ]  # fmt: skip

    def test_lab_config_builds_against_memory_reactor(self) -> None:
        """The example config builds a service; starting it opens every listener."""
        reactor = Reactor()
        service = tap.build_service(options("--config", LAB_CONF, *self.tls_args), reactor)
        self.assertIsInstance(service, SbcService)
        self.assertIs(service.reactor, reactor)
        with capturedLogs() as events:
            service.startService()
            reactor.run()
        names = [e["name"] for e in events if "name" in e and "security" in e]
        self.assertTrue(any("started with" in e["log_format"] for e in events))
        self.assertEqual(names, [a.name for a in service.config.adjacencies])
        self.assertEqual(
            sorted(str(key) for key in service.runtime.listening),
            [
                "TCP 127.0.0.1:5060",
                "TCP 127.0.0.1:5062",
                "TLS 127.0.0.1:5061",
                "TLS 127.0.0.1:5063",
                "UDP 127.0.0.1:5060",
            ],
        )
        self.assertTrue(service.running)
        service.stopService()
        self.assertFalse(service.running)

    def test_workers_build_a_supervisor_checked_like_one_process(self) -> None:
        from sbc.workers.supervisor import Supervisor

        args = [
            "--config", LAB_CONF, "--certificate", self.pki["sbc"],
            "--private-key", self.pki["sbc-key"], "--ca-certificates", self.pki["ca"],
            "--workers", "2",
        ]  # fmt: skip
        supervisor = tap.build_supervisor(options(*args), MemoryReactorClock())
        self.assertIsInstance(supervisor, Supervisor)
        self.assertEqual(len(supervisor.pool.slots), 2)
        self.assertIsNotNone(supervisor.hub)  # no store line: shared through the supervisor
        with self.assertRaises(ConfigError):
            tap.build_supervisor(options("--config", LAB_CONF, "--workers", "2"), Reactor())

    def test_tls_adjacency_without_certificate_refused(self) -> None:
        """examples/lab.conf has a trusted-encrypted adjacency: no certificate, no start."""
        with self.assertRaises(ConfigError) as caught:
            tap.build_service(options("--config", LAB_CONF), MemoryReactorClock())
        self.assertEqual(caught.exception.path, LAB_CONF)
        self.assertGreater(caught.exception.line, 0)

    def test_unreadable_tls_file_refused(self) -> None:
        args = [
            "--config", LAB_CONF, "--certificate", self.pki["sbc"], "--private-key", "/no/key",
            "--ca-certificates", self.pki["ca"],
        ]  # fmt: skip
        with self.assertRaises(ConfigError) as caught:
            tap.build_service(options(*args), MemoryReactorClock())
        self.assertEqual(caught.exception.path, "/no/key")

    def test_make_service_exits_1_with_file_and_line(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("sbc lab\n sbe\n  adjacency sip a\n   signaling-port 99999\n")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(options("--config", path))
        self.assertEqual(caught.exception.code, 1)
        self.assertIn(f"{path}:4:", stderr.getvalue())

    def test_check_config_exits_0(self) -> None:
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(options("--check-config", "--config", LAB_CONF, *self.tls_args))
        self.assertEqual(caught.exception.code, 0)
        self.assertIn("configuration OK", stdout.getvalue())

    def test_only_the_daemon_reloads_on_sighup(self) -> None:
        """makeService (twistd) asks for the SIGHUP reload; build_service alone does not."""
        args = options("--config", LAB_CONF, *self.tls_args)
        # The lab ports may be taken by a `make run` on this machine.
        self.patch(SbcService, "preflight", lambda self: [])
        embedded = tap.build_service(args, Reactor())
        self.assertFalse(embedded.reload_on_sighup)
        daemon = tap.makeService(args)
        assert isinstance(daemon, SbcService)
        self.assertTrue(daemon.reload_on_sighup)
        self.assertTrue(daemon.tune_gc)

    def test_twistd_logs_through_sbcs_text_log(self) -> None:
        """Under twistd, --logfile FILE is sbc's TextLogFile, sized by --log-max-size/--log-keep."""
        import signal

        from twisted.application.service import Application
        from twisted.logger import ILogObserver
        from twisted.scripts.twistd import ServerOptions

        from sbc.logs import TextLogFile

        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        self.patch(SbcService, "preflight", lambda self: [])
        path = os.path.join(os.path.abspath(self.mktemp()) + ".log")
        config = ServerOptions()
        config.parseOptions(
            ["-n", "--logfile", path, "sbc", "--config", LAB_CONF, *self.tls_args,
             "--log-max-size", "2M", "--log-keep", "3"]
        )  # fmt: skip
        daemon = tap.makeService(config.subOptions)
        assert isinstance(daemon, SbcService)
        observer = daemon.log_observer
        assert isinstance(observer, TextLogFile)
        self.addCleanup(observer.close)
        self.assertEqual((observer.path, observer.max_size, observer.keep), (path, 2 * 2**20, 3))
        application = Application("sbc")
        daemon.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)
        self.assertNotEqual(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)
        # --syslog: twistd's own logging, untouched
        config = ServerOptions()
        config.parseOptions(["--syslog", "sbc", "--config", LAB_CONF, *self.tls_args])
        daemon = tap.makeService(config.subOptions)
        assert isinstance(daemon, SbcService)
        self.assertIsNone(daemon.log_observer)

    def test_log_size_options(self) -> None:
        self.assertEqual(options("--config", LAB_CONF)["log-max-size"], 100 * 2**20)
        self.assertEqual(options("--config", LAB_CONF, "--log-max-size", "0")["log-max-size"], 0)
        self.assertEqual(
            options("--config", LAB_CONF, "--log-max-size", "64k")["log-max-size"], 65536
        )
        self.assertEqual(options("--config", LAB_CONF, "--log-keep", "4")["log-keep"], 4)
        for bad in (["--log-max-size", "lots"], ["--log-max-size", "-1"], ["--log-keep", "x"]):
            self.assertRaises(usage.UsageError, options, "--config", LAB_CONF, *bad)

    def free_port_config(self, udp_port: int) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "sbc lab\n sbe\n  adjacency sip a\n   signaling-address ipv4 127.0.0.1\n"
                f"   signaling-port {udp_port}\n   transport udp\n   attach\n"
            )
        return path

    def test_listener_in_use_exits_1_before_starting(self) -> None:
        import socket

        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(options("--config", self.free_port_config(port)))
        self.assertEqual(caught.exception.code, 1)
        self.assertIn(f"sbc: cannot listen on UDP 127.0.0.1:{port}: ", stderr.getvalue())

    def test_cli_path_that_is_a_file_exits_1(self) -> None:
        config = self.free_port_config(free_port())
        # A short directory: a path under the checkout may exceed the 107 bytes a
        # socket path allows, which is checked (and reported) first.
        directory = tempfile.mkdtemp(prefix="sbc-tap-")
        self.addCleanup(shutil.rmtree, directory, True)
        blocker = os.path.join(directory, "sbc.cli")
        with open(blocker, "w") as f:
            f.write("not a socket")
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(options("--config", config, "--cli", f"unix:{blocker}"))
        self.assertEqual(caught.exception.code, 1)
        self.assertIn(f"{blocker} exists and is not a socket", stderr.getvalue())
        with self.assertRaises(SystemExit):
            tap.makeService(options("--config", config, "--cli", "unix:/no/such/dir/sbc.cli"))
        self.assertIn("/no/such/dir is not a directory", stderr.getvalue())
        long_path = "/tmp/" + "d" * 100 + "/sbc.cli"
        with self.assertRaises(SystemExit):
            tap.makeService(options("--config", config, "--cli", f"unix:{long_path}"))
        self.assertIn(
            f"the socket path {long_path} is 113 bytes, more than the 107", stderr.getvalue()
        )

    def test_ssh_options_go_together(self) -> None:
        self.assertRaises(usage.UsageError, options, "--config", LAB_CONF, "--ssh", "tcp:2222")
        self.assertRaises(usage.UsageError, options, "--config", LAB_CONF, "--ssh-keys", "k")
        parsed = options("--config", LAB_CONF, "--ssh", "tcp:2222", "--ssh-keys", "keys")
        settings = parsed.ssh_settings()
        assert settings is not None
        self.assertEqual(settings.endpoint, "tcp:2222")
        self.assertEqual(settings.authorized_keys, "keys")
        self.assertEqual(settings.host_key, os.path.join(REPO, "examples", "ssh_host_key"))
        self.assertIsNone(options("--config", LAB_CONF).ssh_settings())


class PluginTests(SynchronousTestCase):
    def test_twistd_help_lists_sbc_and_its_options(self) -> None:
        listing = subprocess.run(
            [TWISTD, "--help"], capture_output=True, text=True, check=True
        ).stdout
        self.assertIn("sbc", listing.split())
        help_text = subprocess.run(
            [TWISTD, "sbc", "--help"], capture_output=True, text=True, check=True
        ).stdout
        for option in (
            "--config",
            "--cli",
            "--certificate",
            "--private-key",
            "--ca-certificates",
            "--check-config",
            "--ssh",
            "--ssh-keys",
            "--ssh-host-key",
            "--metrics",
            "--log-json",
        ):
            self.assertIn(option, help_text)


class _Collector(protocol.ProcessProtocol):
    """Collects a child's output; fires ``started`` on a log line, ``ended`` at exit."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.output = b""
        self.started: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.marker in self.output and not self.started.called:
            self.started.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if not self.started.called:
            self.started.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(reason.value)


class TwistdProcessTests(TestCase):
    """Runs the real ``twistd -n sbc`` as a new user would."""

    timeout = 60

    @defer.inlineCallbacks
    def test_starts_logs_adjacencies_and_stops_on_sigterm(self) -> Any:
        from twisted.internet import reactor

        pki = lab_pki(self.mktemp())
        # The example config as shipped, moved to free ports so a running
        # `make run` (or anything else on 5060-5062) does not get in the way.
        config = os.path.abspath(self.mktemp())
        with open(LAB_CONF) as f:
            text = f.read()
        for port in ("5060", "5061", "5062", "5063", "5070", "5071"):
            text = text.replace(f" {port}\n", f" {free_port()}\n")
        self.assertNotIn(" 5060\n", text)
        with open(config, "w") as f:
            f.write(text)
        # the user database the example names, beside the config as make run puts it
        shutil.copy(os.path.join(REPO, "examples", "lab-users.htdigest"), os.path.dirname(config))
        collector = _Collector(b"started with")
        # UNIX socket paths are limited to 107 bytes: the trial temp path may be longer.
        cli_directory = tempfile.mkdtemp(prefix="sbc-tap-")
        self.addCleanup(shutil.rmtree, cli_directory, True)
        args = [
            TWISTD, "--pidfile=", "-n", "sbc", "--config", config,
            "--cli", "unix:" + os.path.join(cli_directory, "sbc.cli"),
            "--certificate", pki["sbc"], "--private-key", pki["sbc-key"],
            "--ca-certificates", pki["ca"],
        ]  # fmt: skip
        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            collector, TWISTD, args, env=dict(os.environ), path=REPO
        )
        yield collector.started
        for name in (b"access", b"core-tls", b"phones", b"trunk"):
            self.assertIn(b"adjacency " + name, collector.output)
        process.signalProcess(signal.SIGTERM)
        ended = yield collector.ended
        # twistd shuts down cleanly, then re-raises SIGTERM so the exit status
        # reports the signal (Twisted >= 23): either outcome is a clean stop.
        if not isinstance(ended, error.ProcessDone):
            self.assertEqual(ended.signal, signal.SIGTERM, collector.output)
        self.assertIn(b"sbc lab stopping", collector.output)
        self.assertIn(b"Server Shut Down.", collector.output)

    @defer.inlineCallbacks
    def test_bad_config_exits_nonzero_with_line(self) -> Any:
        from twisted.internet import reactor

        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("sbc lab\n sbe\n  bogus-command 1\n")
        collector = _Collector(b"never printed")
        args = [TWISTD, "--pidfile=", "-n", "sbc", "--config", path]
        reactor.spawnProcess(  # type: ignore[attr-defined]
            collector, TWISTD, args, env=dict(os.environ), path=REPO
        )
        ended = yield collector.ended
        collector.started.addErrback(lambda _: None)
        self.assertIsInstance(ended, error.ProcessTerminated)
        self.assertEqual(ended.exitCode, 1)
        self.assertIn(f"{path}:3:".encode(), collector.output)

    @defer.inlineCallbacks
    def test_endpoint_that_fails_after_start_exits_1(self) -> Any:
        """A management endpoint that cannot be opened stops the daemon with status 1."""
        import socket

        from twisted.internet import reactor

        taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(
                "sbc lab\n sbe\n  adjacency sip a\n   signaling-address ipv4 127.0.0.1\n"
                f"   signaling-port {free_port()}\n   transport udp\n   attach\n"
            )
        collector = _Collector(b"never printed")
        args = [
            TWISTD, "--pidfile=", "-n", "sbc", "--config", config,
            "--cli", f"tcp:{port}:interface=127.0.0.1",
        ]  # fmt: skip
        reactor.spawnProcess(  # type: ignore[attr-defined]
            collector, TWISTD, args, env=dict(os.environ), path=REPO
        )
        ended = yield collector.ended
        collector.started.addErrback(lambda _: None)
        self.assertIsInstance(ended, error.ProcessTerminated, collector.output)
        self.assertEqual(ended.exitCode, 1, collector.output)
        self.assertIn(b"cannot open the management CLI endpoint", collector.output)


class GarbageCollectorTests(SynchronousTestCase):
    def test_tuning_freezes_startup_heap_and_raises_threshold(self) -> None:
        import gc

        from sbc.service import GC_THRESHOLDS, tune_garbage_collector

        if not hasattr(gc, "freeze"):  # PyPy: nothing to tune
            self.assertFalse(tune_garbage_collector())
            return
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        self.assertTrue(tune_garbage_collector())
        self.assertEqual(gc.get_threshold(), GC_THRESHOLDS)
        self.assertGreater(gc.get_freeze_count(), 0)
