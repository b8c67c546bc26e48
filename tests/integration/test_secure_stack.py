"""The whole pipeline over TLS and authentication, on a private secure stack.

Kafka SASL_SSL (SCRAM-SHA-512), Redis with TLS only and an ACL user with a client
certificate, PostgreSQL with TCP over TLS only (``sslmode=verify-full``), all on a CA
the stack makes. Then the refusals: a wrong password or a certificate from another CA
stops each client at start with a ConfigurationError naming the setting to fix, and
never printing the secret.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio

from resultlog.devstack import PrivateStack
from resultlog.devstack.certs import ensure_certificates
from resultlog.errors import BrokerUnavailable, ConfigurationError, StoreUnavailable
from resultlog.producers import Emitter, ensure_topics
from resultlog.settings import Settings
from resultlog.views import HistoryStore, RedisView, ResultBackend
from tests.integration.processes import ProcessorProcess

# Refused logins make aiokafka log at ERROR.
pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.usefixtures("quiet_aiokafka")]


@pytest.fixture(scope="module")
async def secure(base_settings: Settings) -> AsyncIterator[Settings]:
    """A private secure stack for this module; its settings, isolated per run."""
    if base_settings.test_services not in ("auto", "local"):
        pytest.skip(f"the secure stack is built like the local stack ({base_settings.test_services})")
    stack = PrivateStack(base=base_settings, secure=True, out=lambda line: None)
    try:
        await stack.up()
        tag = uuid.uuid4().hex[:10]
        yield stack.settings.replace(events_topic=f"s.{tag}", consumer_group=f"s.{tag}.group",
                                     redis_prefix=f"s{tag}:", postgres_schema=f"s_{tag}")
    except BaseException:
        await stack.down(purge=False)
        raise
    await stack.down()


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def _with_password(url: str, password: str, user: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{user or parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_the_pipeline_runs_end_to_end_over_tls_and_sasl(secure: Settings) -> None:
    s = secure
    assert s.kafka_security_protocol == "SASL_SSL" and s.redis_url.startswith("rediss://")
    assert "sslmode=verify-full" in s.postgres_dsn
    # The servers refuse the plain way in: this is not a plaintext stack with TLS beside it.
    with pytest.raises(BrokerUnavailable):
        await ensure_topics(s.replace(kafka_security_protocol="PLAINTEXT", kafka_sasl_username="",
                                      kafka_sasl_password="", kafka_ssl_ca_location="", kafka_timeout_s=3.0),
                            s.events_topic)
    plain_redis = urlunsplit(urlsplit(s.redis_url)._replace(scheme="redis", query=""))
    client = redis.asyncio.Redis.from_url(plain_redis, socket_timeout=3)
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        await client.ping()
    await client.aclose()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(_with_query(s.postgres_dsn, sslmode="disable"))

    await ensure_topics(s, s.events_topic, s.dead_letter_topic, s.chords_topic, s.chord_completions_topic)
    async with Emitter(s) as emitter:
        await emitter.received("secure-1", task_name="add", args=[2, 3])
        await emitter.started("secure-1")
        await emitter.success("secure-1", 5, runtime=0.01)
        await emitter.flush()
    # The real processor (a faust worker and its aiokafka clients), over the same settings.
    with ProcessorProcess(s) as proc:
        async with ResultBackend(s) as backend:
            result = backend.AioAsyncResult("secure-1")
            assert await result.get(timeout=60) == 5, proc.output()[-3000:]
            assert [e.state for e in await result.history()][-1] == "SUCCESS"
        assert proc.alive(), proc.output()[-3000:]


def _refused(exc: BaseException, *names: str, secret: str = "") -> str:
    message = str(exc)
    assert isinstance(exc, ConfigurationError), f"{type(exc).__name__}: {message}"
    for name in names:
        assert name in message, message
    if secret:
        assert secret not in message and secret not in repr(exc), message
    return message


async def test_a_wrong_password_fails_at_start_naming_the_setting(secure: Settings) -> None:
    wrong = "not-" + uuid.uuid4().hex
    # Kafka: the emitter's start, and the processor's first step (creating its topics).
    kafka = secure.replace(kafka_sasl_password=wrong)
    with pytest.raises(ConfigurationError) as raised:
        await Emitter(kafka).start()
    _refused(raised.value, "RESULTLOG_KAFKA_SASL_PASSWORD", "refused the SASL login", secret=wrong)
    # Redis: the ACL user with a wrong password.
    with pytest.raises(ConfigurationError) as raised:
        async with RedisView(secure.replace(redis_url=_with_password(secure.redis_url, wrong))) as view:
            await view.check_access()
    _refused(raised.value, "RESULTLOG_REDIS_URL", "refused the login", secret=wrong)
    # Redis: an ACL user that may not touch resultlog's keys.
    admin = redis.asyncio.Redis.from_url(secure.redis_url)
    narrow_password = uuid.uuid4().hex
    await admin.acl_setuser("narrow", enabled=True, passwords=[f"+{narrow_password}"],
                            keys=["other:*"], commands=["+@all"], reset=True)
    await admin.aclose()
    narrow_url = _with_password(secure.redis_url, narrow_password, user="narrow")
    with pytest.raises(ConfigurationError) as raised:
        async with RedisView(secure.replace(redis_url=narrow_url)) as view:
            await view.check_access()  # PING is allowed: the refusal comes with the first key
            await view.get("some-task")
    _refused(raised.value, "RESULTLOG_REDIS_URL", "RESULTLOG_REDIS_PREFIX", secret=narrow_password)
    # PostgreSQL: the role with a wrong password.
    with pytest.raises(ConfigurationError) as raised:
        await HistoryStore(secure.replace(postgres_dsn=_with_password(secure.postgres_dsn, wrong))).start()
    _refused(raised.value, "RESULTLOG_POSTGRES_DSN", "refused the login", secret=wrong)


async def test_the_processor_stops_at_start_naming_the_setting(secure: Settings) -> None:
    wrong = "not-" + uuid.uuid4().hex
    env = {**secure.replace(kafka_sasl_password=wrong).to_env(), "PATH": "/usr/bin:/bin"}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "resultlog", "process"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "RESULTLOG_KAFKA_SASL_PASSWORD" in done.stderr, done.stderr[-3000:]
    assert wrong not in done.stderr + done.stdout


async def test_an_untrusted_certificate_fails_at_start_naming_the_setting(
    secure: Settings, tmp_path: Path
) -> None:
    other = ensure_certificates(tmp_path / "other-ca", name="some other").ca
    with pytest.raises(ConfigurationError) as raised:
        await Emitter(secure.replace(kafka_ssl_ca_location=str(other))).start()
    _refused(raised.value, "RESULTLOG_KAFKA_SSL_CA_LOCATION", "not trusted")
    with pytest.raises(ConfigurationError) as raised:
        async with RedisView(secure.replace(redis_url=_with_query(secure.redis_url, ssl_ca_certs=str(other)))) as view:
            await view.check_access()
    _refused(raised.value, "ssl_ca_certs", "RESULTLOG_REDIS_URL", "not trusted")
    with pytest.raises(ConfigurationError) as raised:
        await HistoryStore(secure.replace(postgres_dsn=_with_query(secure.postgres_dsn, sslrootcert=str(other)))).start()
    _refused(raised.value, "sslrootcert", "RESULTLOG_POSTGRES_DSN", "not trusted")
    # A refusal is not an outage: nothing here is retriable.
    assert not ConfigurationError.retriable and StoreUnavailable.retriable
