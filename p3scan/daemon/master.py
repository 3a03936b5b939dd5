"""The master process, modelled on gunicorn's arbiter.

Start-up does everything that can fail while the terminal still sees the error: check the
PID file, prepare directories, bind the port (before dropping privileges, so port 110 works).
Then python-daemon detaches (unless in the foreground), changes to ``user`` with its groups
and takes the PID file, and the master forks ``maxchilds`` workers and keeps them alive.

Signal handlers only queue the signal and wake the main loop through a pipe:
TERM/INT stop gracefully (sessions may finish within ``gracetimeout``), HUP reloads the
configuration and replaces the workers, CHLD just wakes the loop to reap.

A worker that cannot boot during start-up (until the first ``maxchilds`` workers are ready)
stops p3scan: the cause is in the configuration or the installation, and a crash loop would
hide it.  Later the same failure (a full or unwritable spool, say) must not take the running
workers down with the master, so the master backs off (1 s doubling to 60 s), spawns one
probe worker per attempt, logs how many workers are missing and why, and recovers once one
boots.  After a reload the guard is not re-armed: the new configuration was checked already,
stopping would end the sessions in progress, and a second reload can fix a bad one.

Supervision: each worker beats a heartbeat in shared memory and reports its state in status
frames (:mod:`p3scan.daemon.status`).  The master keeps the latest status of each worker
(:meth:`Master.worker_states`) and kills (SIGKILL) a worker silent for longer than
:func:`p3scan.daemon.worker.heartbeat_timeout`: it is stuck, since every wait it may make is
shorter.  The worker is replaced at once; its work directory goes when it is reaped.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import lockfile
from daemon import DaemonContext

from p3scan import PROGNAME, __version__, log
from p3scan.config import options as config
from p3scan.config.settings import Settings
from p3scan.daemon import pidfile, preload, privileges, spooldirs
from p3scan.daemon.status import FrameDecoder, FrameError, Heartbeat, WorkerStatus
from p3scan.daemon.worker import BOOT_ERROR, Worker, heartbeat_timeout
from p3scan.log import LOG
from p3scan.scan import pipeline, scanners

LOOP_TICK = 1.0
BUSY_LOG_INTERVAL = 60.0
MAX_EARLY_DEATHS = 5
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0  # seconds between attempts to boot a worker
MISSING_LOG_INTERVAL = 60.0
SILENT_CHECKS = 2  # a worker is killed once it was found silent this many times in a row


class StartupError(Exception):
    """p3scan cannot start; the message says why."""


@dataclass
class WorkerInfo:
    """What the master knows of one worker."""

    pid: int
    status_fd: int
    generation: int
    heart: Heartbeat
    silence_limit: float  # heartbeat timeout of the configuration it was started with
    booted: bool = False
    busy: bool = False
    deadline: float = 0.0  # when set: SIGTERM was sent, SIGKILL after this time
    failure: str = ""  # why it could not boot, as the worker reported it
    status: WorkerStatus | None = None  # the latest it reported
    decoder: FrameDecoder | None = field(default_factory=FrameDecoder)  # None: unreadable
    hung: bool = False  # killed because its heartbeat stopped
    silent_checks: int = 0  # loop ticks in a row that found it silent past its limit


def backoff_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` boot failures in a row: 1, 2, 4, ... 60."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 16))


def bind(cfg: Settings) -> list[socket.socket]:
    """The listening socket on ``ip:port``; ``::`` accepts IPv6 and IPv4."""
    family = socket.AF_INET6 if ":" in cfg.ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((cfg.ip, cfg.port))
        sock.listen(cfg.backlog)
    except OSError as err:
        sock.close()
        where = f"[{cfg.ip}]:{cfg.port}" if family == socket.AF_INET6 else f"{cfg.ip}:{cfg.port}"
        raise StartupError(f"ERR: Can't bind to socket {where}: {err.strerror}") from None
    sock.setblocking(False)
    return [sock]


class Master:
    """Owns the listening socket, the PID file and the workers."""

    def __init__(self, cfg: config.Config):
        self.cfg = cfg
        self.cwd = os.getcwd()
        self.as_root = os.geteuid() == 0
        self.listeners: list[socket.socket] = []
        self.workers: dict[int, WorkerInfo] = {}
        self.signals: list[int] = []
        self.wake_r = self.wake_w = -1
        self.generation = 0
        self.stopping = False
        self.halt_reason = ""
        self.early_deaths = 0
        self.starting = True  # until maxchilds workers were ready: boot failures stop p3scan
        self.ready_count = 0
        self.boot_failures = 0  # in a row, after start-up
        self.retry_at = 0.0
        self.last_missing_log = -MISSING_LOG_INTERVAL
        self.last_busy_log = -BUSY_LOG_INTERVAL
        self.pid = os.getpid()

    @property
    def foreground(self) -> bool:
        return bool(self.cfg.debug or self.cfg.foreground)

    # --- start-up -------------------------------------------------------------------------

    def start(self) -> int:
        """Start the daemon; return its exit status."""
        for warning in log.setup(self.cfg, stderr=True):
            LOG.warning("%s", warning)
        try:
            account = self._account()
            lock = pidfile.claim(self.cfg.pidfile)
            created = self._prepare(account)
            self.listeners = bind(self.cfg)
        except (StartupError, pidfile.AlreadyRunning, privileges.UnknownUser) as err:
            LOG.critical("%s", err)
            return 1
        except pidfile.Unwritable as err:
            LOG.critical("ERR: %s", err)
            return 1
        except spooldirs.DirectoryProblem as err:
            for line in err.lines:
                LOG.critical("ERR: %s", line)
            return 1
        loaded = preload.preload()
        LOG.debug("Preloaded %d modules (codecs, email) before the change of user", loaded)
        log.close_handlers()
        context = self._daemon_context(account, lock)
        try:
            if self.as_root:
                privileges.drop(account)
            context.open()
        except (lockfile.Error, privileges.PrivilegeError) as err:
            log.setup(self.cfg, stderr=self.foreground)
            LOG.critical("ERR: %s", pidfile.describe(err, self.cfg.pidfile))
            return 1
        try:
            log.setup(self.cfg, stderr=self.foreground)
            self.pid = os.getpid()
            for line in created:
                LOG.info("%s", line)
            self._log_started(account)
            return self.loop()
        finally:
            context.close()

    def _prepare(self, account: privileges.Account) -> list[str]:
        """Create or check the directories, then try the PID file; report every problem."""
        problems: list[str] = []
        created: list[str] = []
        try:
            created = spooldirs.prepare(self.cfg, account, as_root=self.as_root)
        except spooldirs.DirectoryProblem as err:
            problems = err.lines
        try:
            pidfile.check_writable(self.cfg.pidfile, account if self.as_root else None)
        except pidfile.Unwritable as err:
            problems.append(str(err))
        if problems:
            raise spooldirs.DirectoryProblem(problems)
        return created

    def _account(self) -> privileges.Account:
        if self.as_root:
            return privileges.resolve(self.cfg.user)
        return privileges.current()

    def _daemon_context(self, account: privileges.Account, lock: Any) -> DaemonContext:
        streams = (sys.stdin, sys.stdout, sys.stderr) if self.foreground else (None,) * 3
        return DaemonContext(
            detach_process=not self.foreground,
            files_preserve=[sock.fileno() for sock in self.listeners],
            uid=account.uid,
            gid=account.gid,
            umask=0o022,
            working_directory="/",
            pidfile=lock,
            stdin=streams[0],
            stdout=streams[1],
            stderr=streams[2],
            signal_map={},
        )

    def _log_started(self, account: privileges.Account) -> None:
        cfg = self.cfg
        LOG.info("%s Version %s", PROGNAME, __version__)
        scanner = scanners.create(cfg)
        LOG.info("Selected scannertype: %s (%s)", scanner.name, scanner.description)
        problem = scanner.check()
        if problem:
            LOG.warning("Scanner check: %s", problem)
        for line in pipeline.unsupported_options(cfg):
            LOG.warning("%s", line)
        LOG.info("Listen now on %s", _listen_text(cfg))
        if self.as_root:
            LOG.info("Changing uid (we are root)")
        LOG.info("Running as user: %s", account.name)
        if cfg.quiet:
            LOG.info("%s %s started.", PROGNAME, __version__, extra=log.FORCE)

    # --- main loop ------------------------------------------------------------------------

    def loop(self) -> int:
        self._install_signals()
        self.spawn_workers()
        while True:
            self._sleep()
            self._reap()
            if self.halt_reason:
                LOG.critical("%s; stopping p3scan", self.halt_reason)
                self._stop_workers(graceful=False)
                return 1
            while self.signals:
                self._handle_signal(self.signals.pop(0))
            self._kill_overdue()
            self._kill_silent()
            if self.stopping:
                if not self.workers:
                    LOG.info("%s terminates now", PROGNAME)
                    return 0
                continue
            self.spawn_workers()
            self._check_busy()

    def _install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum: int, frame: object) -> None:
        """Signal handler: only queue and wake the loop (logging here could deadlock)."""
        if signum != signal.SIGCHLD:
            self.signals.append(signum)
        try:
            os.write(self.wake_w, b".")
        except OSError:
            pass

    def _sleep(self) -> None:
        by_fd = {info.status_fd: info for info in self.workers.values()}
        timeout = LOOP_TICK
        wait = self.retry_at - time.monotonic()
        if self.boot_failures and 0 < wait < timeout:  # wake up for the next attempt
            timeout = wait
        try:
            readable, _, _ = select.select([self.wake_r, *by_fd], [], [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            if fd == self.wake_r:
                _drain(fd)
            else:
                self._read_status(by_fd[fd])

    def _read_status(self, info: WorkerInfo) -> None:
        data = _drain(info.status_fd)
        if info.decoder is None or not data:
            return
        try:
            statuses = info.decoder.feed(data)
        except FrameError as err:  # a bug: nothing more of this worker can be trusted
            LOG.error("ERR: worker %d sent an unreadable status (%s); its status is "
                      "ignored from now on", info.pid, err)
            info.decoder = None
            return
        for status in statuses:
            self._apply_status(info, status)

    def _apply_status(self, info: WorkerInfo, status: WorkerStatus) -> None:
        info.status = status
        if status.state == "ready" and not info.booted:
            self._booted(info)
        elif status.state in ("busy", "idle"):
            info.busy = status.state == "busy"
        elif status.state == "failed":
            info.failure = status.reason

    def worker_states(self) -> dict[int, dict[str, Any]]:
        """Per worker PID, its latest status and how the master sees it (for status
        commands and metrics): JSON-ready."""
        now = time.monotonic()
        states = {}
        for pid, info in self.workers.items():
            status = info.status.as_dict() if info.status else {"state": "starting"}
            states[pid] = {**status, "generation": info.generation,
                           "retiring": bool(info.deadline), "stuck": info.hung,
                           "silent": round(info.heart.silent_for(now), 3)}
        return states

    def _booted(self, info: WorkerInfo) -> None:
        info.booted = True
        self.early_deaths = 0
        self.ready_count += 1
        if self.starting and self.ready_count >= self.cfg.maxchilds:
            self.starting = False
        if self.boot_failures:
            LOG.warning("Workers boot again after %d failed attempts; the missing workers "
                        "are started now", self.boot_failures)
            self.boot_failures = 0
            self.retry_at = 0.0

    # --- workers --------------------------------------------------------------------------

    def _current(self) -> list[WorkerInfo]:
        """Workers of the current configuration that are not being retired."""
        return [w for w in self.workers.values()
                if w.generation == self.generation and not w.deadline]

    def spawn_workers(self) -> None:
        current = self._current()
        missing = self.cfg.maxchilds - len(current)
        if self.boot_failures:  # backing off: one probe worker, once its time has come
            if time.monotonic() < self.retry_at or any(not w.booted for w in current):
                return
            missing = min(missing, 1)
        for _ in range(missing):
            self._spawn()

    def _spawn(self) -> None:
        status_r, status_w = os.pipe()
        heart = Heartbeat()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(status_r)
                self._become_worker()
                code = Worker(self.cfg, self.listeners, status_w, self.pid, heart).run()
            except BaseException:
                LOG.exception("Worker %d crashed", os.getpid())
            finally:
                os._exit(code)
        os.close(status_w)
        os.set_blocking(status_r, False)
        self.workers[pid] = WorkerInfo(pid, status_r, self.generation, heart,
                                       heartbeat_timeout(self.cfg))
        LOG.debug("Forked worker, pid=%d, workers=%d", pid, len(self.workers))

    def _become_worker(self) -> None:
        """In the new child: forget the master's signal handling and pipes."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        for fd in [self.wake_r, self.wake_w] + [w.status_fd for w in self.workers.values()]:
            os.close(fd)
        for info in self.workers.values():
            info.heart.close()  # a sibling's heartbeat is none of its business
        self.workers = {}

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            info = self._forget(pid)
            if info is not None:
                self._judge_exit(info, status)

    def _forget(self, pid: int) -> WorkerInfo | None:
        """Drop a dead worker: close its pipe and remove its work directory."""
        info = self.workers.pop(pid, None)
        if info is not None:
            self._read_status(info)  # a boot failure's reason may still be in the pipe
            os.close(info.status_fd)
            info.heart.close()
            shutil.rmtree(spooldirs.worker_dir(self.cfg, pid), ignore_errors=True)
        return info

    def _judge_exit(self, info: WorkerInfo, status: int) -> None:
        if os.WIFSIGNALED(status):
            if not info.deadline:
                LOG.critical("ERR: Attention: worker %d died with signal %d; starting a new one",
                             info.pid, os.WTERMSIG(status))
            self._count_early_death(info)
            return
        code = os.WEXITSTATUS(status)
        if code == BOOT_ERROR:
            self._boot_failed(info, info.failure or "see the line before")
        elif code != 0:
            LOG.critical("ERR: worker %d exited with status %d", info.pid, code)
            self._count_early_death(info)
        else:
            LOG.debug("Worker %d exited", info.pid)

    def _count_early_death(self, info: WorkerInfo) -> None:
        if info.booted or (info.deadline and not info.hung):
            return
        if not self.starting:
            self._boot_failed(info, "it died before it was ready")
            return
        self.early_deaths += 1
        if self.early_deaths >= MAX_EARLY_DEATHS:
            self.halt_reason = f"{self.early_deaths} workers died before they were ready"

    def _boot_failed(self, info: WorkerInfo, reason: str) -> None:
        """During start-up stop p3scan; later back off and try again."""
        if self.starting:
            self.halt_reason = f"Worker {info.pid} failed to boot ({reason})"
            return
        self.boot_failures += 1
        delay = backoff_delay(self.boot_failures)
        self.retry_at = time.monotonic() + delay
        now = time.monotonic()
        if self.boot_failures == 1 or now - self.last_missing_log >= MISSING_LOG_INTERVAL:
            self.last_missing_log = now
            missing = self.cfg.maxchilds - len([w for w in self._current() if w.booted])
            LOG.error("ERR: %d of %d workers are missing: a new worker failed to boot (%s); "
                      "%d failed attempts in a row, next attempt in %ds", missing,
                      self.cfg.maxchilds, reason, self.boot_failures, delay)

    def _check_busy(self) -> None:
        current = self._current()
        if len(current) < self.cfg.maxchilds or not all(w.busy for w in current):
            return
        now = time.monotonic()
        if now - self.last_busy_log >= BUSY_LOG_INTERVAL:
            self.last_busy_log = now
            LOG.warning("MAX_CHILDS (%d) reached! All workers are busy; new connections wait "
                        "in the listen backlog", self.cfg.maxchilds)

    def _retire(self, info: WorkerInfo, graceful: bool = True) -> None:
        info.deadline = time.monotonic() + (self.cfg.gracetimeout if graceful else 0)
        _kill(info.pid, signal.SIGTERM if graceful else signal.SIGKILL)

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for info in list(self.workers.values()):
            if info.deadline and now > info.deadline:
                LOG.warning("Worker %d did not finish within %ds; killing it", info.pid,
                            self.cfg.gracetimeout)
                _kill(info.pid, signal.SIGKILL)
                info.deadline = float("inf")

    def _kill_silent(self) -> None:
        """SIGKILL workers whose heartbeat stopped: no wait of theirs lasts that long."""
        now = time.monotonic()
        for info in list(self.workers.values()):
            silent = info.heart.silent_for(now)
            if info.deadline == float("inf") or silent <= info.silence_limit:
                info.silent_checks = 0
                continue
            info.silent_checks += 1
            if info.silent_checks < SILENT_CHECKS:  # seen once is not proof enough
                continue
            doing = info.status.describe() if info.status else "starting"
            LOG.error("ERR: worker %d is stuck: no heartbeat for %.1fs (limit %.0fs), %s; "
                      "killing it and starting a new one", info.pid, silent,
                      info.silence_limit, doing)
            _kill(info.pid, signal.SIGKILL)
            info.deadline = float("inf")
            info.hung = True

    def _stop_workers(self, graceful: bool) -> None:
        for info in list(self.workers.values()):
            self._retire(info, graceful)
        if not graceful:
            for pid in list(self.workers):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
                self._forget(pid)

    # --- signals --------------------------------------------------------------------------

    def _handle_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload()
        elif self.stopping:
            if signum == signal.SIGINT:
                LOG.warning("Second interrupt: killing the remaining workers")
                for info in self.workers.values():
                    _kill(info.pid, signal.SIGKILL)
        else:
            LOG.info("signalled, doing cleanup")
            self.stopping = True
            for sock in self.listeners:
                sock.close()
            self._stop_workers(graceful=True)

    def reload(self) -> None:
        """Re-read the configuration; on success replace every worker, else keep going."""
        LOG.info("SIGHUP: reloading the configuration from %s", self.cfg.configfile)
        try:
            new = config.load(self.cfg.argv, cwd=self.cwd)
            new = self._keep_restart_only(new)
            spooldirs.prepare(new, privileges.current(), as_root=False)
        except config.ConfigError as err:
            for line in err.lines:
                LOG.error("reload: %s", line)
            LOG.error("The new configuration is not valid; keeping the old one")
            return
        except spooldirs.DirectoryProblem as err:
            for line in err.lines:
                LOG.error("reload: %s", line)
            LOG.error("Directories of the new configuration are not usable; keeping the old one")
            return
        self.cfg = new
        for warning in log.setup(new, stderr=self.foreground):
            LOG.warning("%s", warning)
        self.generation += 1
        self.boot_failures = 0  # the new configuration gets a full set of workers at once
        self.retry_at = 0.0
        for info in list(self.workers.values()):
            if not info.deadline:
                self._retire(info)
        self.spawn_workers()
        LOG.info("Configuration reloaded; workers replaced")

    def _keep_restart_only(self, new: config.Config) -> config.Config:
        kept = {}
        for key in config.RESTART_ONLY:
            if getattr(new, key) != getattr(self.cfg, key):
                LOG.warning("reload: %s changed from %s to %s; that needs a restart",
                            key, getattr(self.cfg, key), getattr(new, key))
                kept[key] = getattr(self.cfg, key)
        return new.replace(**kept) if kept else new


def _listen_text(cfg: Settings) -> str:
    return f"[{cfg.ip}]:{cfg.port}" if ":" in cfg.ip else f"{cfg.ip}:{cfg.port}"


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return data
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
