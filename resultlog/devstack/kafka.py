"""Apache Kafka for the local stack: KRaft nodes (each broker and controller), no Docker.

How the jars are fetched and a node formatted and run, and why this version:
docs/local-stack.md; the nodes of a cluster: :mod:`resultlog.devstack.kafka_nodes`.
"""

from __future__ import annotations

import importlib.resources
import re
import shutil
import string
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from resultlog.devstack import process, secure
from resultlog.devstack.kafka_nodes import (
    admin_client,
    node_name,
    node_ports,
    random_cluster_id,
    shared_cluster_id,
)
from resultlog.devstack.process import Out
from resultlog.devstack.service import Port, Service
from resultlog.errors import DevStackError
from resultlog.settings import Settings

KAFKA_VERSION = "4.0.0"
SCALA_VERSION = "2.13"
# What the Kafka 4.0.0 release tarball ships (libs/log4j-*-2.24.3.jar); the binding
# is log4j-slf4j-impl because the broker uses slf4j-api 1.7.
LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
MIN_JAVA = 17
HEAP = ["-Xms256m", "-Xmx512m"]
JVM_OPTIONS = [
    *HEAP,
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]
# The storage format tool runs for a second: C2 compiling would be CPU spent for
# nothing (measured: 2.2 s of CPU with it, 1.2 s without), and a cluster formats
# three nodes at once.
TOOL_JVM_OPTIONS = [*JVM_OPTIONS, "-XX:TieredStopAtLevel=1"]
_COMPLETE = ".complete"


def broker_config(
    *,
    port: int,
    controller_port: int,
    data_dir: Path,
    node_id: int = 1,
    voters: Mapping[int, int] | None = None,
) -> dict[str, str]:
    """The configuration of one node that is both broker and controller.

    ``voters`` maps each node id of the cluster to its controller port (default: this
    node alone). Internal topics (and topics created without a replication factor, such
    as faust's) get every node up to three and need all but one of them in sync, so a
    cluster accepts acks=all writes and keeps its group offsets and transactions while
    any one node is down. docker-compose.yml and the Docker test fixture use the
    one-node settings.
    """
    voters = {node_id: controller_port} if voters is None else voters
    replicas = str(min(len(voters), 3))
    in_sync = str(max(min(len(voters), 3) - 1, 1))
    return {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": ",".join(
            f"{voter}@127.0.0.1:{cport}" for voter, cport in sorted(voters.items())
        ),
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "default.replication.factor": replicas,
        "min.insync.replicas": in_sync,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": in_sync,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": in_sync,
        # Small internal topics: fewer files, faster first group/transaction.
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.num.partitions": "1",
        "num.partitions": "1",
        # Tests: a consumer group's first rebalance must not wait 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        # resultlog creates its topics (partitions and retention matter); a typo in a
        # topic name must fail, not silently create a one-partition topic.
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        # Memory: the default compaction buffer alone is 128 MiB.
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        # Leftovers of deleted test topics go away quickly.
        "log.segment.delete.delay.ms": "1000",
        "file.delete.delay.ms": "1000",
    }


def _resource(name: str) -> str:
    return importlib.resources.files("resultlog.devstack").joinpath(name).read_text()


class KafkaService(Service):
    """One KRaft node; ``node_id`` 1 to ``settings.dev_kafka_brokers``."""

    kind = "kafka"
    start_timeout_s = 120.0
    stop_timeout_s = 45.0

    def __init__(self, settings: Settings, out: Out, *, node_id: int = 1) -> None:
        if not 1 <= node_id <= settings.dev_kafka_brokers:
            raise DevStackError(
                f"kafka: there is no node {node_id}; the nodes are 1 to "
                f"{settings.dev_kafka_brokers} (RESULTLOG_DEV_KAFKA_BROKERS)"
            )
        super().__init__(settings, out, name=node_name(settings, node_id))
        self.node_id = node_id

    @property
    def ports(self) -> list[Port]:
        port = node_ports(self.settings)[self.node_id - 1]
        setting = "RESULTLOG_KAFKA_BOOTSTRAP_SERVERS"
        node = "" if self.settings.dev_kafka_brokers == 1 else f" {self.node_id}"
        return [
            Port(port, f"kafka broker{node}", setting),
            Port(port + 1, f"kafka controller{node}", f"{setting} (the controller uses its port + 1)"),
        ]

    @property
    def cache_dir(self) -> Path:
        return Path(self.settings.dev_cache_dir) / f"kafka-{KAFKA_VERSION}"

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / "libs"

    def classpath_ready(self) -> bool:
        return (self.libs_dir / _COMPLETE).exists()

    # -- checks -------------------------------------------------------------------------

    def check_tools(self) -> None:
        self.check_host(self.settings.kafka_bootstrap_servers, "RESULTLOG_KAFKA_BOOTSTRAP_SERVERS")
        java = shutil.which("java")
        major = None if java is None else _java_major(java)
        if java is None or (major is not None and major < MIN_JAVA):
            found = "`java` is not on PATH" if java is None else f"{java} is Java {major}"
            raise DevStackError(
                f"kafka: {found}; Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} "
                f"or newer (Debian: apt-get install -y openjdk-{MIN_JAVA}-jre-headless)"
            )
        if not self.classpath_ready() and shutil.which("mvn") is None:
            raise DevStackError(
                f"kafka: the Kafka {KAFKA_VERSION} jars are not in {self.libs_dir} yet and "
                f"`mvn` (Apache Maven) is not on PATH to fetch them from Maven Central "
                f"(Debian: apt-get install -y maven)"
            )

    def port_conflicts(self) -> list[str]:
        conflicts = super().port_conflicts()
        if conflicts and (other := self.hint_when_stopped()):
            conflicts.insert(0, other)
        return conflicts

    def hint_when_stopped(self) -> str | None:
        """Which Kafka of this state dir, with the other node count, runs (if one does)."""
        dev_dir = self.home.parent
        if self.settings.dev_kafka_brokers == 1:
            homes = sorted(dev_dir.glob("kafka-[0-9]*"))
            advice = "give the same --brokers (or RESULTLOG_DEV_KAFKA_BROKERS) as `dev up` did"
        else:
            homes = [dev_dir / "kafka"]
            advice = "stop it first with `resultlog dev down --only kafka`"
        running = [
            home.name for home in homes
            if home.is_dir() and process.owned_pid(home / "kafka.pid", home) is not None
        ]
        if not running:
            return None
        return f"Kafka node(s) {', '.join(running)} of {dev_dir} run with another node count: {advice}"

    # -- prepare: classpath and storage -------------------------------------------------

    def prepare(self) -> None:
        if not self.classpath_ready():
            self._fetch_classpath()
        self.home.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage()

    def _fetch_classpath(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        pom = self.cache_dir / "pom.xml"
        pom.write_text(
            string.Template(_resource("kafka-pom.xml")).substitute(
                kafka_version=KAFKA_VERSION,
                scala_version=SCALA_VERSION,
                log4j_version=LOG4J_VERSION,
                dependency_plugin_version=DEPENDENCY_PLUGIN_VERSION,
            )
        )
        staging = self.cache_dir / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        log = self.cache_dir / "maven.log"
        log.unlink(missing_ok=True)
        self.say(
            f"fetching Kafka {KAFKA_VERSION} from Maven Central into {self.libs_dir} "
            f"(once; log {log})"
        )
        started = time.monotonic()
        counted = {"files": 0, "said": started}

        def progress(line: str) -> None:
            if "Downloaded from" in line:
                counted["files"] += 1
            now = time.monotonic()
            if now - counted["said"] >= 3:
                counted["said"] = now
                self.say(f"maven: {counted['files']} files downloaded so far")

        process.run_logged(
            [
                "mvn", "--batch-mode",
                "-f", str(pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            log_path=log,
            what=f"mvn dependency:copy-dependencies (Kafka {KAFKA_VERSION})",
            cwd=self.cache_dir,
            on_line=progress,
        )
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if not any(name.startswith(f"kafka_{SCALA_VERSION}-") for name in jars):
            raise DevStackError(process.with_tail("maven did not produce the Kafka jar", log))
        (staging / _COMPLETE).write_text("\n".join(jars) + "\n")
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        staging.rename(self.libs_dir)
        self.say(
            f"maven: {len(jars)} jars ready ({counted['files']} files downloaded) "
            f"in {time.monotonic() - started:.1f} s"
        )

    def _write_config(self) -> None:
        broker, controller = (p.number for p in self.ports)
        voters = {i: port + 1 for i, port in enumerate(node_ports(self.settings), start=1)}
        config = broker_config(port=broker, controller_port=controller,
                               data_dir=self.data_dir.resolve(), node_id=self.node_id,
                               voters=voters)
        # The secure listener, if the settings ask for one, replaces the PLAINTEXT one.
        config.update(secure.kafka_listener_config(self.settings, broker, controller))
        properties = self.home / "server.properties"
        properties.write_text(
            "# Written by `resultlog dev up` on every start; edits are overwritten.\n"
            + "".join(f"{key}={value}\n" for key, value in config.items())
        )
        properties.chmod(0o600)  # it may hold the SASL users' passwords
        (self.home / "log4j2.properties").write_text(_resource("kafka-log4j2.properties"))

    def _java(self, main_class: str, *args: str, options: list[str] = JVM_OPTIONS) -> list[str]:
        return [
            "java",
            *options,
            f"-Dlog4j2.configurationFile={(self.home / 'log4j2.properties').resolve()}",
            "-cp",
            str(self.libs_dir.resolve() / "*"),
            main_class,
            *args,
        ]

    def _format_storage(self) -> None:
        count = self.settings.dev_kafka_brokers
        if count == 1:
            cluster_id = random_cluster_id()
        else:
            names = [node_name(self.settings, i) for i in range(1, count + 1)]
            cluster_id = shared_cluster_id(self.home.parent, names)
        self.say(f"formatting KRaft storage in {self.data_dir} (cluster id {cluster_id})")
        process.run_logged(
            self._java(
                "kafka.tools.StorageTool", "format",
                "-t", cluster_id,
                "-c", str((self.home / "server.properties").resolve()),
                "--ignore-formatted",
                *secure.kafka_format_arguments(self.settings),
                options=TOOL_JVM_OPTIONS,
            ),
            log_path=self.home / "format.log",
            what="kafka storage format",
            cwd=self.home,
            secrets=secure.kafka_secrets(self.settings),
        )

    # -- run ----------------------------------------------------------------------------

    def start(self) -> None:
        process.rotate(self.log_path)
        pid = process.spawn_detached(
            self._java("kafka.Kafka", str((self.home / "server.properties").resolve())),
            cwd=self.home,
            log_path=self.log_path,
        )
        self.pid_path.write_text(f"{pid}\n")

    async def answers(self) -> bool:
        """A metadata request through this node's port lists a broker (one node) or
        this node (a cluster: metadata lists only brokers the controller has registered
        and unfenced, so a node that is listed serves requests).
        """
        broker = self.ports[0].number
        if not await process.port_open(broker):
            return False  # spares aiokafka's connection-error logging
        try:
            async with admin_client(self.settings, f"127.0.0.1:{broker}") as admin:
                brokers = (await admin.describe_cluster()).get("brokers", [])
        except (KafkaError, OSError, TimeoutError):
            return False
        if self.settings.dev_kafka_brokers == 1:
            # Any broker: the test fixtures also probe Kafkas that are not ours
            # (RESULTLOG_TEST_SERVICES=env), whose node ids we do not know.
            return bool(brokers)
        return any(b.get("node_id") == self.node_id for b in brokers)


def _java_major(java: str) -> int | None:
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8
