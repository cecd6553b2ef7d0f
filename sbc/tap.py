"""``twistd sbc``: command-line options and ``makeService``. Nothing else lives here."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from sbc.config import load_config
from sbc.errors import ConfigError
from sbc.service import SbcService, SshSettings, TlsFiles
from sbc.workers.supervisor import MAX_WORKERS, Supervisor, worker_count


class Options(usage.Options):
    """Options of ``twistd sbc``."""

    synopsis = "[options]"
    longdesc = (
        "Runs the sbc Session Border Controller on an IOS-XR-style configuration file. "
        "TLS (trusted-encrypted adjacencies) needs --certificate and --private-key; "
        "--ca-certificates names the trust anchors used to verify peers."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (IOS-XR style, see docs/configuration.md)."],
        [
            "cli",
            None,
            None,
            "Management CLI endpoint (strports); default: UNIX socket sbc.cli beside the config.",
        ],
        [
            "ssh",
            None,
            None,
            "Also serve the CLI over SSH on this endpoint (strports, e.g. "
            "tcp:2222:interface=127.0.0.1); public-key authentication only.",
        ],
        [
            "ssh-keys",
            None,
            None,
            "authorized_keys file: the public keys allowed to log in over SSH.",
        ],
        [
            "ssh-host-key",
            None,
            None,
            "SSH host private key; default: ssh_host_key beside the config, generated if missing.",
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics over HTTP on this endpoint (strports, e.g. "
            "tcp:9460:interface=127.0.0.1); scrape path /metrics.",
        ],
        [
            "log-json",
            None,
            None,
            "Also write every log event as one JSON object per line to this file ('-': stdout).",
        ],
        [
            "log-max-size",
            None,
            "100M",
            "Rotate the text log file (twistd --logfile) past this size (bytes; K, M, G "
            "suffixes); 0: never (SIGUSR1 reopens it, for logrotate).",
        ],
        ["log-keep", None, "10", "Rotated text log files to keep (FILE.1 ... FILE.N)."],
        [
            "workers",
            None,
            "1",
            "Worker processes sharing the SIP ports (SO_REUSEPORT) under one supervisor that "
            "owns the CLI and the metrics; 'auto': one per CPU. 1: a single process.",
        ],
        ["certificate", None, None, "PEM file with the SBC's certificate (and intermediates)."],
        ["private-key", None, None, "PEM file with the private key of --certificate."],
        ["ca-certificates", None, None, "PEM file with the CA certificates trusted for peers."],
    ]
    optFlags = [
        ["check-config", None, "Validate the configuration and exit: status 0 valid, 1 invalid."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required")
        self["log-max-size"] = _size(str(self["log-max-size"]), "--log-max-size")
        try:
            self["log-keep"] = int(self["log-keep"])
        except ValueError:
            raise usage.UsageError("--log-keep must be a whole number") from None
        if self["log-keep"] < 0:
            raise usage.UsageError("--log-keep must not be negative")
        try:
            self["workers"] = worker_count(str(self["workers"]))
        except ValueError:
            raise usage.UsageError(
                f"--workers takes a number from 1 to {MAX_WORKERS}, or auto"
            ) from None
        tls = (self["certificate"], self["private-key"], self["ca-certificates"])
        if any(tls) and not all(tls):
            raise usage.UsageError("--certificate, --private-key and --ca-certificates go together")
        if bool(self["ssh"]) != bool(self["ssh-keys"]):
            raise usage.UsageError("--ssh and --ssh-keys go together")

    def tls_files(self) -> TlsFiles | None:
        """The TLS identity named on the command line, if any."""
        if not self["certificate"]:
            return None
        return TlsFiles(self["certificate"], self["private-key"], self["ca-certificates"])

    def cli_endpoint(self) -> str:
        """The management endpoint: --cli, or a UNIX socket beside the config file."""
        if self["cli"]:
            return str(self["cli"])
        directory = os.path.dirname(os.path.abspath(self["config"]))
        return "unix:" + os.path.join(directory, "sbc.cli") + ":mode=600"

    def ssh_settings(self) -> SshSettings | None:
        """The SSH CLI settings, if --ssh was given."""
        if not self["ssh"]:
            return None
        host_key = self["ssh-host-key"] or os.path.join(
            os.path.dirname(os.path.abspath(self["config"])), "ssh_host_key"
        )
        return SshSettings(str(self["ssh"]), str(self["ssh-keys"]), str(host_key))


def _size(text: str, option: str) -> int:
    """``100M`` -> bytes (suffixes K, M, G: powers of 1024); UsageError when malformed."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    number = text.strip().upper().removesuffix("B")
    scale = units.get(number[-1:], 1)
    if scale != 1:
        number = number[:-1]
    try:
        value = int(number) * scale
    except ValueError:
        raise usage.UsageError(f"{option}: not a size: {text!r}") from None
    if value < 0:
        raise usage.UsageError(f"{option} must not be negative")
    return value


def build_service(
    options: Options,
    reactor: Any = None,
    tune_gc: bool = False,
    reload_on_sighup: bool = False,
    overload_control: bool = False,
) -> SbcService:
    """Load, validate and build the service; raise ``ConfigError`` on a bad config."""
    config = load_config(options["config"])
    return SbcService.from_config(
        config,
        reactor=reactor,
        tls=options.tls_files(),
        config_path=options["config"],
        cli_endpoint=options.cli_endpoint(),
        ssh=options.ssh_settings(),
        metrics_endpoint=options["metrics"] or None,
        tune_gc=tune_gc,
        reload_on_sighup=reload_on_sighup,
        overload_control=overload_control,
    )


def build_supervisor(options: Options, reactor: Any = None) -> Supervisor:
    """``--workers N`` (N > 1): the supervisor of N worker processes (docs/scaling.md)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config = load_config(options["config"])
    return Supervisor.from_config(
        config,
        reactor,
        options["workers"],
        tls=options.tls_files(),
        config_path=options["config"],
        cli_endpoint=options.cli_endpoint(),
        ssh=options.ssh_settings(),
        metrics_endpoint=options["metrics"] or None,
        reload_on_sighup=True,
    )


def makeService(options: Options) -> IService:
    """Called by twistd: build the service or exit non-zero with ``file:line: problem``."""
    service: SbcService | Supervisor
    try:
        if options["workers"] > 1:
            service = build_supervisor(options)
        else:
            # The process is the SBC: it owns the garbage collector, SIGHUP and its
            # reactor's load.
            service = build_service(
                options, tune_gc=True, reload_on_sighup=True, overload_control=True
            )
    except ConfigError as error:
        sys.stderr.write(f"sbc: {error}\n")
        raise SystemExit(1) from None
    if options["check-config"]:
        sys.stdout.write(f"sbc: {options['config']}: configuration OK\n")
        raise SystemExit(0)
    problems = service.preflight()
    if problems:
        for problem in problems:
            sys.stderr.write(f"sbc: {problem}\n")
        raise SystemExit(1)
    if options["log-json"]:
        from twisted.logger import globalLogPublisher

        from sbc.logs import json_log_observer

        globalLogPublisher.addObserver(json_log_observer(options["log-json"]))
    _use_text_log(options, service)
    service.reactor.addSystemEventTrigger("after", "shutdown", _exit_if_failed, service)
    return service


def _use_text_log(options: Options, service: SbcService | Supervisor) -> None:
    """Log through :class:`sbc.logs.TextLogFile` instead of twistd's own text log.

    Only under twistd (whose options are the parent of ours) and when twistd
    would write a file or stdout (not with --syslog or --logger). SIGUSR1
    reopens the file (twistd's own log rotated on SIGUSR1).
    """
    parent = getattr(options, "parent", None)
    if parent is None or "logfile" not in parent:
        return
    from sbc.logs import text_log_for

    observer = text_log_for(parent, options["log-max-size"], options["log-keep"])
    if observer is None:
        return
    service.log_observer = observer
    reactor = service.reactor
    if observer.path is not None:

        def reopen(signum: int, frame: Any) -> None:
            # A signal handler may run between any two bytecodes: hand over to the reactor.
            reactor.callFromThread(observer.reopen)

        signal.signal(signal.SIGUSR1, reopen)
    reactor.addSystemEventTrigger("after", "shutdown", observer.flush)


def _exit_if_failed(service: SbcService | Supervisor) -> None:
    """After shutdown: exit with status 1 when the service gave up at start-up."""
    if service.fatal_error is not None:
        from sbc.logs import flush_text_logs

        flush_text_logs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
