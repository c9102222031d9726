"""A real single-node Apache Kafka broker (KRaft, combined broker+controller) for demo and tests.

No Docker: the broker's jars come from Maven Central once (cached per version), and the broker
runs as a plain ``java`` child process in its own session, so a Ctrl-C in the terminal that
started it does not take it down and ``recal kafka stop`` can end it from another process.
See DESIGN §10 for the facts this module relies on.

    >>> kafka = LocalKafka(data_dir=Path("/tmp/recal-kafka"))   # doctest: +SKIP
    >>> bootstrap = kafka.start()                                # doctest: +SKIP
    >>> kafka.stop()                                             # doctest: +SKIP
    True
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.core.errors import ConfigError, RecalError

log = logging.getLogger(__name__)

DEFAULT_VERSION = "3.9.1"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_HEAP = "512m"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
POM_TEMPLATE = Path(__file__).with_name("pom.xml")

ENV_CACHE_DIR = "RECAL_KAFKA_HOME"
ENV_DATA_DIR = "RECAL_KAFKA_DATA"

_FETCH_MARKER = ".fetch-complete"
_STATE_NAME = "broker.json"
_LOG_NAME = "broker.log"
# Long enough for a cold Maven repository on a slow link; mvn prints nothing with -q.
_FETCH_TIMEOUT_S = 1800.0
_FORMAT_TIMEOUT_S = 120.0
# A bind race with another process is the only start failure worth retrying blindly.
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 80


class LocalKafkaError(RecalError):
    """The local broker could not be fetched, started or stopped."""


def default_cache_dir() -> Path:
    """Where jars are cached: ``$RECAL_KAFKA_HOME`` or ``~/.cache/recal/kafka``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recal" / "kafka"


def default_data_dir() -> Path:
    """Where the CLI's broker keeps its data: ``$RECAL_KAFKA_DATA`` or ``./.kafka``."""
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else Path.cwd() / ".kafka"


def new_cluster_id() -> str:
    """A KRaft cluster id: 22-char base64url (no padding) of a random UUID.

    Kafka's own ``Uuid.randomUuid`` rejects ids starting with '-' because its command-line
    tools would read them as options; draw again in that case.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):
            return cid


def parse_java_major(version_output: str) -> int:
    """The major Java version from ``java -version`` output ("1.8.0_292" → 8, "17.0.1" → 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        raise LocalKafkaError(
            f"cannot read the Java version from `java -version`; got {version_output.strip()!r}"
        )
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        major = int(match.group(2))
    return major


def min_java_major(kafka_version: str) -> int:
    """Kafka 4 brokers need Java 17; for 3.x this project asks for 11 (8 is deprecated)."""
    return 17 if _major(kafka_version) >= 4 else 11


def render_server_properties(
    *, host: str, broker_port: int, controller_port: int, log_dirs: Path
) -> str:
    """server.properties for one combined KRaft node with every replication factor at 1."""
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # Static voters, so format needs no --standalone and works the same on 3.9 and 4.0.
        "controller.quorum.voters": f"1@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{broker_port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{broker_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        # Consumer groups in tests would otherwise wait 3 s before the first assignment.
        "group.initial.rebalance.delay.ms": "0",
        # The default 128 MB dedupe buffer is a quarter of our heap; compaction of test-sized
        # changelogs needs far less.
        "log.cleaner.dedupe.buffer.size": "33554432",
        # Topics are created explicitly (create_topics, the worker's start-up) so typos fail loudly.
        "auto.create.topics.enable": "false",
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    lines = ["# Written by recal (worker/localkafka); rewritten on every start."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def render_log4j_properties() -> str:
    """reload4j config: everything to stdout, which the launcher redirects to broker.log."""
    return (
        "log4j.rootLogger=INFO, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        # One line per request at INFO would drown the useful lines in the failure tails.
        "log4j.logger.kafka.request.logger=WARN\n"
        "log4j.logger.state.change.logger=WARN\n"
        "log4j.logger.org.apache.kafka.clients=WARN\n"
    )


# --- readiness: one Metadata round trip through aiokafka's admin client ----------------------
# start() is called from sync fixtures and from code that may already run an event loop, so
# the probe runs its own loop (asyncio.run) in a short-lived worker thread.


def probe_metadata(host: str, port: int, timeout_s: float = 5.0) -> list[tuple[int, str, int]]:
    """One Metadata round trip to host:port (aiokafka's admin client); the brokers the
    cluster reports as ``(node_id, host, port)``. Raises ``LocalKafkaError`` when the broker
    does not answer in time."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _describe_brokers(f"{host}:{port}", timeout_s)).result()


async def _describe_brokers(bootstrap: str, timeout_s: float) -> list[tuple[int, str, int]]:
    # Imported here so the CLI's fetch/start/stop work without loading the Kafka client.
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    timeout_ms = max(100, int(timeout_s * 1000))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    # A broker still starting refuses connections; aiokafka logs each refusal as an error,
    # which is the normal state of a readiness poll, not something to show.
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise LocalKafkaError(f"no Metadata answer from {bootstrap}: {exc!r}") from exc
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
        quiet.setLevel(level)
    return [(int(b["node_id"]), str(b["host"]), int(b["port"])) for b in cluster["brokers"]]


# --- process helpers --------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie (an exited, unreaped child)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (or a race with exit); os.kill said it exists
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def process_cmdline(pid: int) -> list[str]:
    """argv of a process ([] when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return []
        # No procfs (macOS): ps gives one string, good enough for the substring checks below.
        out = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True
        )
        return [out.stdout.strip()] if out.returncode == 0 and out.stdout.strip() else []
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port and a listener could bind it again.

    SO_REUSEADDR mirrors what Java server sockets do on Linux, so connections of a stopped
    broker lingering in TIME_WAIT do not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pick_ports(host: str, count: int, prefer: Sequence[int] = ()) -> list[int]:
    """Distinct free ports; reuse ``prefer`` when all are still free (stable bootstrap)."""
    if (
        len(prefer) == count
        and len(set(prefer)) == count
        and all(port_is_free(host, p) for p in prefer)
    ):
        return list(prefer)
    # Hold every socket until all are chosen, so the kernel cannot hand out one port twice.
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock between processes, released even on crash (fd closes)."""
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _major(version: str) -> int:
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)$", version)
    if match is None:
        raise ConfigError(f"Kafka version must look like 3.9.1; got {version!r}")
    return int(match.group(1))


def _tail(path: Path, lines: int = _LOG_TAIL_LINES, start: int = 0) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read()
    except OSError:
        return f"(no log at {path})"
    text = data.decode("utf-8", "replace").rstrip("\n")
    if not text:
        return f"(log {path} is empty)"
    return "\n".join(text.splitlines()[-lines:])


def _state_pid(state: Mapping[str, Any] | None) -> int | None:
    pid = (state or {}).get("pid")
    return pid if isinstance(pid, int) and pid > 0 else None


class _PortConflict(LocalKafkaError):
    """The broker lost a bind race for one of its ports; retried with fresh ports."""


# --- the broker -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partition count and topic-level config (values as strings)."""

    name: str
    partitions: int = 1
    config: Mapping[str, str] = field(default_factory=dict)
    replication_factor: int = 1

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", self.name):
            raise ConfigError(
                f"topic name must be 1-249 chars of [A-Za-z0-9._-]; got {self.name!r}"
            )
        if self.partitions < 1:
            raise ConfigError(f"partitions must be >= 1; got {self.partitions}")
        if self.replication_factor < 1:
            raise ConfigError(f"replication_factor must be >= 1; got {self.replication_factor}")


@dataclass(kw_only=True)
class LocalKafka:
    """One local Kafka broker bound to a data directory.

    Several objects may point at the same data directory (e.g. ``recal kafka status`` in
    another process); the JSON state file there is what ties them to the running process.
    """

    version: str = DEFAULT_VERSION
    cache_dir: Path = field(default_factory=default_cache_dir)
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = DEFAULT_HOST
    heap: str = DEFAULT_HEAP
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _major(self.version)
        if not re.fullmatch(r"\d+[kKmMgG]?", self.heap):
            raise ConfigError(f"heap must look like 512m or 1g; got {self.heap!r}")
        # Absolute paths: they are matched against the java command line of the broker.
        self.cache_dir = Path(self.cache_dir).expanduser().resolve()
        self.data_dir = Path(self.data_dir).expanduser().resolve()

    # -- paths --

    @property
    def version_dir(self) -> Path:
        return self.cache_dir / self.version

    @property
    def libs_dir(self) -> Path:
        return self.version_dir / "libs"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.data_dir / "log4j.properties"

    @property
    def log_file(self) -> Path:
        return self.data_dir / _LOG_NAME

    @property
    def state_file(self) -> Path:
        return self.data_dir / _STATE_NAME

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "data"

    def is_fetched(self) -> bool:
        return (self.version_dir / _FETCH_MARKER).is_file() and self.libs_dir.is_dir()

    # -- fetch --

    def fetch(self) -> Path:
        """Download the broker's jars into the cache once; the libs folder.

        The completion marker is written only after Maven succeeded and the folder is in
        place, so an interrupted fetch is simply redone.
        """
        if self.is_fetched():
            return self.libs_dir
        if _major(self.version) != 3:
            raise ConfigError(
                f"Kafka {self.version} is not supported by {POM_TEMPLATE.name}: it ships the "
                "reload4j logging backend of Kafka 3.x (4.x needs log4j2)"
            )
        self.version_dir.mkdir(parents=True, exist_ok=True)
        # Parallel test sessions or `make -j` may fetch at once; Maven's output dirs would clash.
        with _flock(self.version_dir / ".lock"):
            if self.is_fetched():  # another process finished while we waited for the lock
                return self.libs_dir
            self._java()  # fail before a long download that could never run
            mvn = shutil.which("mvn")
            if mvn is None:
                raise LocalKafkaError(
                    "Maven (`mvn`) is not on PATH; it is needed once to download the Kafka "
                    "jars (e.g. `apt-get install maven`)"
                )
            pom = self.version_dir / "pom.xml"
            shutil.copyfile(POM_TEMPLATE, pom)
            partial = self.version_dir / "libs.partial"
            shutil.rmtree(partial, ignore_errors=True)
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                f"{MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={partial}",
                f"-Dkafka.version={self.version}",
            ]
            log.info("Fetching Kafka %s jars into %s (once; ~30 s)", self.version, self.libs_dir)
            started = time.monotonic()
            try:
                done = subprocess.run(
                    cmd,
                    cwd=self.version_dir,
                    capture_output=True,
                    text=True,
                    timeout=_FETCH_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise LocalKafkaError(
                    f"Maven did not finish fetching Kafka {self.version} within "
                    f"{_FETCH_TIMEOUT_S:.0f} s"
                ) from exc
            if done.returncode != 0:
                output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-40:])
                raise LocalKafkaError(
                    f"Maven failed (exit {done.returncode}) fetching Kafka {self.version}: "
                    f"{' '.join(cmd)}\n{output}"
                )
            jars = sorted(partial.glob("*.jar"))
            if not any(j.name == f"kafka_2.13-{self.version}.jar" for j in jars):
                raise LocalKafkaError(
                    f"Maven succeeded but {partial} has no kafka_2.13-{self.version}.jar"
                )
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            partial.rename(self.libs_dir)
            marker = {"version": self.version, "jars": len(jars), "fetched_at": time.time()}
            (self.version_dir / _FETCH_MARKER).write_text(json.dumps(marker) + "\n")
            log.info(
                "Fetched %d jars for Kafka %s in %.1f s",
                len(jars),
                self.version,
                time.monotonic() - started,
            )
        return self.libs_dir

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
        if not java or not Path(java).exists():
            raise LocalKafkaError(
                "Java is not installed (no `java` on PATH or in $JAVA_HOME); Kafka "
                f"{self.version} needs Java {min_java_major(self.version)}+ "
                "(e.g. `apt-get install openjdk-17-jre-headless`)"
            )
        try:
            out = subprocess.run(
                [java, "-version"], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalKafkaError(f"cannot run `{java} -version`: {exc}") from exc
        major = parse_java_major(out.stderr + out.stdout)
        needed = min_java_major(self.version)
        if major < needed:
            raise LocalKafkaError(
                f"Kafka {self.version} needs Java {needed}+; {java} is Java {major}"
            )
        return java

    # -- start --

    def start(self, timeout_s: float = 120.0) -> str:
        """Start the broker (fetching jars first if needed); its bootstrap "host:port".

        Returns at once when this data directory's broker is already running. Raises
        ``LocalKafkaError`` with the tail of the broker log when the process exits or is not
        ready within ``timeout_s``; no process is left behind in that case.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Two `recal kafka start` at once on one data dir: the second waits, then finds the
        # first one's broker running instead of launching a second JVM on the same logs.
        with _flock(self.data_dir / ".start.lock"):
            return self._start_locked(timeout_s)

    def _start_locked(self, timeout_s: float) -> str:
        current = self.status()
        if current["running"]:
            log.info(
                "Kafka broker already running at %s (pid %s)", current["bootstrap"], current["pid"]
            )
            if not current["ready"]:
                # Another process is still starting it; its readiness is ours too.
                self._wait_other_ready(current, time.monotonic() + timeout_s)
            return str(current["bootstrap"])
        libs = self.fetch()
        java = self._java()
        for sub in (self.data_dir, self.log_dirs, self.data_dir / "tmp"):
            sub.mkdir(parents=True, exist_ok=True)
        self.log4j_file.write_text(render_log4j_properties())
        previous = self._read_state() or {}
        prefer = [int(previous.get("broker_port", 0)), int(previous.get("controller_port", 0))]
        deadline = time.monotonic() + timeout_s
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            broker_port, controller_port = _pick_ports(self.host, 2, prefer=prefer)
            prefer = []
            self.config_file.write_text(
                render_server_properties(
                    host=self.host,
                    broker_port=broker_port,
                    controller_port=controller_port,
                    log_dirs=self.log_dirs,
                )
            )
            self._format_storage(java, libs)
            try:
                return self._launch(java, libs, broker_port, controller_port, deadline)
            except _PortConflict:
                if attempt == _PORT_ATTEMPTS:
                    raise
                log.warning("Kafka lost a port race (attempt %d); retrying with new ports", attempt)
        raise AssertionError("unreachable")

    def _jvm_args(self, java: str, libs: Path, heap: str) -> list[str]:
        return [
            java,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.data_dir}",
            f"-Djava.io.tmpdir={self.data_dir / 'tmp'}",
            f"-Dlog4j.configuration={self.log4j_file.as_uri()}",
            "-cp",
            f"{libs}/*",  # the JVM expands the wildcard itself; no shell involved
        ]

    def _format_storage(self, java: str, libs: Path) -> None:
        if (self.log_dirs / "meta.properties").is_file():
            return  # formatted before; skipping saves a JVM start (~2 s)
        cmd = [
            *self._jvm_args(java, libs, "256m"),
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(self.config_file),
            "--cluster-id",
            new_cluster_id(),
            "--ignore-formatted",
        ]
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=_FORMAT_TIMEOUT_S,
                check=False,
                cwd=self.data_dir,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(
                f"formatting Kafka storage in {self.log_dirs} took over {_FORMAT_TIMEOUT_S:.0f} s"
            ) from exc
        if done.returncode != 0:
            raise LocalKafkaError(
                f"formatting Kafka storage in {self.log_dirs} failed (exit {done.returncode}):\n"
                f"{(done.stdout + done.stderr).strip()}"
            )
        log.debug("Formatted Kafka storage: %s", done.stdout.strip())

    def _launch(
        self, java: str, libs: Path, broker_port: int, controller_port: int, deadline: float
    ) -> str:
        cmd = [*self._jvm_args(java, libs, self.heap), "kafka.Kafka", str(self.config_file)]
        bootstrap = f"{self.host}:{broker_port}"
        launched = time.monotonic()
        with self.log_file.open("wb") as log_fh:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self._proc = proc
        state: dict[str, Any] = {
            "pid": proc.pid,
            "bootstrap": bootstrap,
            "broker_port": broker_port,
            "controller_port": controller_port,
            "data_dir": str(self.data_dir),
            "version": self.version,
            "ready": False,
            "started_at": time.time(),
        }
        # Written before readiness so `recal kafka stop` elsewhere can end a hung start.
        self._write_state(state)
        try:
            self._wait_ready(proc, broker_port, deadline)
        except BaseException:
            # Whatever went wrong (timeout, crash, Ctrl-C), never leave a broker behind.
            self._terminate(proc.pid, proc, timeout_s=10.0)
            self._proc = None
            self.state_file.unlink(missing_ok=True)
            raise
        elapsed = time.monotonic() - launched
        state.update(ready=True, start_seconds=round(elapsed, 3))
        self._write_state(state)
        log.info(
            "Kafka %s ready at %s in %.1f s (pid %d, data %s)",
            self.version,
            bootstrap,
            elapsed,
            proc.pid,
            self.data_dir,
        )
        return bootstrap

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
        while True:
            code = proc.poll()
            if code is not None:
                tail = _tail(self.log_file)
                if "Address already in use" in tail:
                    raise _PortConflict(f"port conflict:\n{tail}")
                raise LocalKafkaError(
                    f"Kafka broker exited with code {code} during start-up; "
                    f"last lines of {self.log_file}:\n{tail}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LocalKafkaError(
                    f"Kafka broker (pid {proc.pid}) was not ready on {self.host}:{port} in time; "
                    f"last lines of {self.log_file}:\n{_tail(self.log_file)}"
                )
            # Connect first (cheap), then one Metadata round trip: the port opens before the
            # broker has joined the quorum, and only then does it list itself as a broker.
            with contextlib.suppress(OSError, LocalKafkaError):
                brokers = probe_metadata(self.host, port, timeout_s=min(5.0, remaining))
                if any(b_port == port for _, _, b_port in brokers):
                    return
            time.sleep(0.1)

    def _wait_other_ready(self, current: Mapping[str, Any], deadline: float) -> None:
        pid, port = int(current["pid"]), int(current["broker_port"])
        while pid_alive(pid):
            with contextlib.suppress(OSError, LocalKafkaError):
                if any(p == port for _, _, p in probe_metadata(self.host, port, timeout_s=5.0)):
                    return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        raise LocalKafkaError(
            f"Kafka broker (pid {pid}) started by another process is not ready on "
            f"{self.host}:{port}; last lines of {self.log_file}:\n{self.log_tail()}"
        )

    # -- stop --

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop this data directory's broker: SIGTERM, then SIGKILL after ``timeout_s``.

        Returns False when no broker was running. Works from any process: the PID comes from
        the state file and is checked to be our java process before it is signalled.
        """
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            proc = self._proc = None  # already exited (and now reaped)
        pid: int | None = proc.pid if proc is not None else None
        if pid is None:
            state_pid = _state_pid(self._read_state())
            if state_pid is not None and self._is_our_broker(state_pid):
                pid = state_pid
        if pid is None:
            self._mark_stopped()
            return False
        code = self._terminate(pid, proc, timeout_s)
        self._proc = None
        self._mark_stopped()
        log.info(
            "Kafka broker (pid %d) stopped%s", pid, f" (exit {code})" if code is not None else ""
        )
        return True

    def _mark_stopped(self) -> None:
        """Keep the ports but drop the PID, so the next start can reuse the same bootstrap."""
        state = self._read_state()
        if state is None:
            return
        keep = ("broker_port", "controller_port", "data_dir", "version")
        self._write_state({"pid": None, **{k: state[k] for k in keep if k in state}})

    def _terminate(
        self, pid: int, proc: subprocess.Popen[bytes] | None, timeout_s: float
    ) -> int | None:
        """SIGTERM, wait, SIGKILL; the exit code when the process is our child."""
        # 143 = 128 + SIGTERM: how the JVM exits after its shutdown hooks ran; normal.
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if sig == signal.SIGKILL:
                log.warning(
                    "Kafka broker (pid %d) ignored SIGTERM for %.0f s; killed", pid, timeout_s
                )
            if self._wait_exit(pid, proc, wait_s):
                break
        else:
            raise LocalKafkaError(f"Kafka broker (pid {pid}) survived SIGKILL")
        if proc is not None:
            return proc.wait()
        return None

    @staticmethod
    def _wait_exit(pid: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> bool:
        if proc is not None:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # -- status --

    def status(self) -> dict[str, Any]:
        """running, pid, bootstrap, data_dir, log_file (+ ports, ready, version, start_seconds).

        A state file whose PID is gone or is not our java broker (PID reuse) is not trusted.
        """
        state = self._read_state()
        pid = _state_pid(state)
        running = pid is not None and self._is_our_broker(pid)
        return {
            "running": running,
            "pid": pid if running else None,
            "bootstrap": state["bootstrap"] if running and state else None,
            "data_dir": str(self.data_dir),
            "log_file": str(self.log_file),
            "version": (state or {}).get("version", self.version),
            "broker_port": state.get("broker_port") if running and state else None,
            "controller_port": state.get("controller_port") if running and state else None,
            "ready": bool(state.get("ready")) if running and state else False,
            "start_seconds": state.get("start_seconds") if running and state else None,
        }

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the broker log (for failure reports)."""
        return _tail(self.log_file, lines)

    def _is_our_broker(self, pid: int) -> bool:
        if pid <= 0 or not pid_alive(pid):
            return False
        argv = process_cmdline(pid)
        if not argv:
            return False
        if len(argv) == 1:  # ps fallback: one string
            return "java" in argv[0] and str(self.config_file) in argv[0]
        return (
            "java" in Path(argv[0]).name
            and "kafka.Kafka" in argv
            and (str(self.config_file) in argv)
        )

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("Ignoring unreadable Kafka state file %s: %s", self.state_file, exc)
            return None
        return state if isinstance(state, dict) else None

    def _write_state(self, state: Mapping[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)  # atomic: a concurrent status never reads half a file


# --- topics -----------------------------------------------------------------------------------


async def create_topics(
    bootstrap: str, specs: Sequence[TopicSpec], *, timeout_s: float = 30.0
) -> list[str]:
    """Create topics (idempotent: an existing topic is fine); the names newly created.

    Waits until every topic has a leader for each partition, because KRaft acknowledges the
    creation once the controller committed it, slightly before the broker serves it.
    An existing topic with a different partition count is kept (logged as a warning).
    """
    # Imported here so the CLI's fetch/start/stop work without loading the Kafka client.
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    if not specs:
        return []
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(
                    name=spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=spec.replication_factor,
                    topic_configs={k: str(v) for k, v in spec.config.items()},
                )
                for spec in specs
            ],
            timeout_ms=int(timeout_s * 1000),
        )
        created: list[str] = []
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                raise LocalKafkaError(
                    f"cannot create topic {name!r}: {for_code(code).__name__} ({code})"
                    + (f": {message}" if message else "")
                )
        deadline = time.monotonic() + timeout_s
        counts = await _wait_topics_ready(admin, specs, deadline)
    finally:
        await admin.close()
    if created:
        await _wait_partitions_served(bootstrap, {n: counts[n] for n in created}, deadline)
    return created


async def _wait_topics_ready(
    admin: Any, specs: Sequence[TopicSpec], deadline: float
) -> dict[str, int]:
    """Wait until the metadata shows a leader for every partition; partition counts."""
    wanted = {spec.name: spec for spec in specs}
    while True:
        described = await admin.describe_topics(list(wanted))
        pending: list[str] = []
        counts: dict[str, int] = {}
        for topic in described:
            partitions = topic.get("partitions") or []
            if (
                topic.get("error_code")
                or not partitions
                or any(p.get("leader", -1) < 0 for p in partitions)
            ):
                pending.append(topic["topic"])
            counts[topic["topic"]] = len(partitions)
        if not pending:
            for name, spec in wanted.items():
                if counts.get(name, spec.partitions) != spec.partitions:
                    log.warning(
                        "Topic %s exists with %d partitions, not %d; keeping it",
                        name,
                        counts[name],
                        spec.partitions,
                    )
            return counts
        if time.monotonic() > deadline:
            raise LocalKafkaError(f"topics not ready (no partition leader yet): {pending}")
        await asyncio.sleep(0.05)


async def _wait_partitions_served(
    bootstrap: str, counts: Mapping[str, int], deadline: float
) -> None:
    """Wait until the leader actually hosts each new partition.

    The broker publishes a new leader in its metadata a moment before its replica manager
    has created the partition, and a producer arriving in that gap logs a
    NotLeaderForPartition retry. A ListOffsets (end_offsets) succeeds only once the
    partition is served; aiokafka retries it internally until then.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaTimeoutError

    partitions = [TopicPartition(name, p) for name, n in counts.items() for p in range(n)]
    remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=remaining_ms
    )
    await consumer.start()
    try:
        await consumer.end_offsets(partitions)
    except KafkaTimeoutError as exc:
        raise LocalKafkaError(
            f"new topics not served within {remaining_ms} ms: {sorted(counts)}"
        ) from exc
    finally:
        await consumer.stop()
