"""The Celery backend's configuration: the ``result_backend`` URL, Celery's conf, then
``RESULTLOG_*``.

    app.conf.result_backend = "resultlog://"                      # RESULTLOG_* only
    app.conf.result_backend = "resultlog://?redis_prefix=app1:&ack_ready=false"
    app.conf.resultlog = {"events_topic": "app1.events"}          # a mapping, same names

A name is a :class:`~resultlog.settings.Settings` field (``redis_url``,
``events_topic``, ...) or one of the backend's own options (:data:`OPTIONS`). The URL
wins over ``app.conf.resultlog``, which wins over ``RESULTLOG_*`` variables; an unknown
name or a malformed value is a :class:`ConfigurationError` naming it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from resultlog import names
from resultlog.errors import ConfigurationError
from resultlog.settings import ENV_PREFIX, SECRET_SETTINGS, URL_SETTINGS, Settings
from resultlog.views.exceptions import module_names

#: The backend's own options, beside the Settings fields.
ACK_READY: Final = "ack_ready"
READ_YOUR_WRITES: Final = "read_your_writes"
IMPORT_MODULES: Final = "import_modules"
WORKER_HEARTBEAT_S: Final = "worker_heartbeat_s"
OPTIONS: Final = (ACK_READY, READ_YOUR_WRITES, IMPORT_MODULES, WORKER_HEARTBEAT_S)
#: Celery's own worker-heartbeat event interval (celery.worker.heartbeat.Heart).
DEFAULT_WORKER_HEARTBEAT_S: Final = 2.0
#: The intervals worker_heartbeat_s may take besides 0 (off). Below 0.1 s the worker's
#: timer would spend its time beating and flood the log; above a day a dead worker
#: would stay listed for days (it counts as alive for three intervals), and beyond
#: about 23 years the derived ttl_s no longer fits the heartbeat record's int, so every
#: beat failed (only a logged warning) and the worker never showed.
MIN_WORKER_HEARTBEAT_S: Final = 0.1
MAX_WORKER_HEARTBEAT_S: Final = 86_400.0
#: The Celery conf key holding a mapping of the same names.
CONF_KEY: Final = "resultlog"
# Result serializers an app may configure. An event's result is JSON text whatever the
# app's choice (the log is read by SQL, replay and other languages, not only by this
# app), so every value goes through kombu's JSON: it carries every type msgpack can, and
# datetime, Decimal, UUID and bytes besides; a value only YAML can carry (a set) is
# refused as unserializable, as Celery refuses what its serializer cannot encode.
SERIALIZERS: Final = ("json", "msgpack", "yaml")

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})

#: What each option takes in ``app.conf.resultlog``, as Settings fields are typed.
_OPTION_KINDS: Final = {ACK_READY: "bool", READ_YOUR_WRITES: "bool", IMPORT_MODULES: "modules",
                        WORKER_HEARTBEAT_S: "float"}
# Besides a str (parsed as the URL's text is), what a value in app.conf.resultlog may be:
# its own type, as Python code writes it ({"topic_partitions": 16, "ack_ready": False}).
_CONF_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "int": (int,), "float": (int, float), "bool": (bool, int)}


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """What the backend was configured with."""

    settings: Settings
    #: Storing a ready state (SUCCESS, FAILURE, REVOKED) returns only once Kafka
    #: acknowledged the event, so a task Celery acknowledged never loses its result.
    ack_ready: bool = True
    #: Every stored state waits for Kafka's acknowledgement and is then folded into the
    #: view by the storing process, so it is readable as soon as store_result returns
    #: (as with Celery's Redis backend), not only once the processor folded it.
    read_your_writes: bool = True
    #: Modules the exception rebuilder may import (views/exceptions.py).
    import_modules: tuple[str, ...] = ()
    #: A worker's heartbeat interval (resultlog/celery_backend/heartbeat.py); 0: none.
    worker_heartbeat_s: float = DEFAULT_WORKER_HEARTBEAT_S

    @classmethod
    def load(
        cls,
        url: str | None,
        conf: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> BackendConfig:
        """The configuration named by ``url`` and ``conf`` (Celery's ``app.conf.resultlog``)."""
        if url is not None and not isinstance(url, str):
            raise ConfigurationError(
                f"result_backend must be a {names.CELERY_BACKEND_SCHEME}:// URL string "
                f"(a str), got {type(url).__name__}")  # not shown: it may hold a password
        if conf is not None and not isinstance(conf, Mapping):
            raise ConfigurationError(
                f"app.conf.{CONF_KEY} must be a mapping of setting names to values (e.g. "
                f"{{'events_topic': 'proj.events'}}), got {type(conf).__name__}")  # may hold a secret
        kinds = {f.name: str(f.type) for f in fields(Settings)}
        given = {name: _conf_value(name, value, kinds.get(name, _OPTION_KINDS.get(name)))
                 for name, value in (conf or {}).items()}
        given.update(_url_options(url))
        known = set(kinds)
        for name in given:
            if name not in known and name not in OPTIONS:
                raise ConfigurationError(
                    f"unknown resultlog backend setting {name!r} (in the result_backend URL or "
                    f"app.conf.{CONF_KEY}); known: {', '.join(OPTIONS)}, and the settings "
                    f"{', '.join(sorted(known))}"
                )
        ack_ready = _bool(ACK_READY, given.pop(ACK_READY, "true"))
        read_your_writes = _bool(READ_YOUR_WRITES, given.pop(READ_YOUR_WRITES, "true"))
        modules = given.pop(IMPORT_MODULES, ())
        if isinstance(modules, str):  # comma-separated, as a URL gives it
            modules = module_names([m.strip() for m in modules.split(",") if m.strip()],
                                   f"resultlog backend setting {IMPORT_MODULES}")
        heartbeat_s = _seconds(WORKER_HEARTBEAT_S,
                               given.pop(WORKER_HEARTBEAT_S, str(DEFAULT_WORKER_HEARTBEAT_S)),
                               MIN_WORKER_HEARTBEAT_S, MAX_WORKER_HEARTBEAT_S)
        merged = dict(os.environ if env is None else env)
        merged.update({ENV_PREFIX + name.upper(): value for name, value in given.items()})
        try:
            settings = Settings.from_env(merged)
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"the resultlog Celery backend's settings are invalid: {exc} (a name given in "
                f"the result_backend URL or app.conf.{CONF_KEY} is reported as RESULTLOG_NAME)"
            ) from None
        return cls(settings, ack_ready, read_your_writes, modules, heartbeat_s)


def _conf_value(name: object, value: object, kind: str | None) -> Any:
    """``app.conf.resultlog[name]`` as text, as the URL would give it (import_modules
    given as a list: the checked tuple); else :class:`ConfigurationError` naming it.
    str() of anything else gave a topic or prefix named 'None' without a word."""
    where = f"app.conf.{CONF_KEY}[{name!r}]"
    if kind is None:  # unknown: refused by name with the list of known ones
        return value
    if isinstance(value, str):  # import_modules too: comma-separated, as in the URL
        return value
    if kind == "modules":
        return module_names(value, where)
    if kind == "str" and isinstance(value, (list, tuple)) \
            and all(isinstance(entry, str) for entry in value):
        return ",".join(value)  # e.g. several kafka_bootstrap_servers
    allowed = _CONF_TYPES.get(kind, ())
    if isinstance(value, allowed) and (kind == "bool" or not isinstance(value, bool)):
        return str(value)
    wanted = {"str": "a str", "int": "an int", "float": "a number",
              "bool": "True or False"}.get(kind, f"a {kind}")
    # A password, or a URL that may hold one, is never printed (as Settings.display).
    shown = "" if name in SECRET_SETTINGS or name in URL_SETTINGS else f" {value!r:.60}"
    raise ConfigurationError(
        f"{where} must be {wanted} (or its text, as in the result_backend URL), got "
        f"{type(value).__name__}{shown}; leave the name out for its default")


def _url_options(url: str | None) -> dict[str, str]:
    if not url:
        return {}
    parts = urlsplit(url)
    if parts.scheme != names.CELERY_BACKEND_SCHEME:
        raise ConfigurationError(
            f"result_backend {parts.scheme}://... is not resultlog's; expected "
            f"{names.CELERY_BACKEND_SCHEME}://[?name=value&...]"
        )
    if parts.netloc or parts.path not in ("", "/") or parts.fragment:
        raise ConfigurationError(
            f"result_backend {names.CELERY_BACKEND_SCHEME}:// takes its settings in the query "
            f"only (e.g. {names.CELERY_BACKEND_SCHEME}://?redis_url=redis://host:6379/0); "
            f"got a host, path or fragment in {url.split('?')[0]!r}"
        )
    out: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigurationError(f"result_backend URL query is malformed: {exc}") from None
    for name, value in pairs:
        if name in out:
            raise ConfigurationError(f"result_backend URL names {name!r} twice")
        out[name] = value
    return out


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"resultlog backend setting {name}={raw!r} is not a boolean (true/false)")


def _seconds(name: str, raw: str, low: float, high: float) -> float:
    """``raw`` (the URL's text, or app.conf's number as text) as seconds: 0 (off) or
    from ``low`` to ``high``; else :class:`ConfigurationError` naming it."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    # not low <= value <= high: true for NaN and infinity too.
    if value != 0 and not low <= value <= high:
        raise ConfigurationError(
            f"resultlog backend setting {name}={raw!r:.40} must be 0 (off) or a number of "
            f"seconds from {low:g} to {high:g}")
    return value + 0.0  # -0.0 as 0.0


def check_serializer(serializer: str) -> None:
    """Refuse, at start-up, a result serializer the backend cannot or must not use."""
    if serializer == "pickle":
        raise ConfigurationError(
            "result_serializer 'pickle' cannot be used with the resultlog backend: results "
            "go onto a log that every worker can write, and unpickling them would run code "
            "chosen by whoever wrote them. Use result_serializer = 'json' (Celery's default; "
            "kombu's JSON keeps datetime, Decimal, UUID and bytes)"
        )
    if serializer not in SERIALIZERS:
        raise ConfigurationError(
            f"result_serializer {serializer!r} is not supported by the resultlog backend: "
            f"use one of {', '.join(SERIALIZERS)} (results are kept in the log as kombu's "
            "JSON whichever is chosen, which keeps datetime, Decimal, UUID and bytes)"
        )
