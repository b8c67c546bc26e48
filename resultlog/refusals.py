"""A server that refused us, told apart from one that could not be reached.

A wrong password or an untrusted certificate is a mistake in a setting: retrying
cannot help, and "Kafka is unavailable" would send the operator looking at the wrong
thing. These functions turn such failures into a :class:`ConfigurationError` that
names the setting to fix (never its secret); anything else gives None and the caller
reports the server as unreachable, as before.

aiokafka logs the reason a bootstrap connection failed and then raises only "Unable to
bootstrap" (aiokafka/client.py), so for Kafka :func:`kafka_refusal` connects once more
to each bootstrap server itself, with the same settings, to see the reason.
"""

from __future__ import annotations

import ssl
from typing import Any

from resultlog.errors import ConfigurationError
from resultlog.redaction import redact_text
from resultlog.settings import Settings

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH: the certificate is trusted but names another host.
_HOSTNAME_MISMATCH = 62


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes and contexts (client libraries wrap the SSL error)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _find(exc: BaseException, kind: type[BaseException]) -> Any:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def _tls_refusal(exc: BaseException, where: str, ca_setting: str, hostname_setting: str,
                 advice: str) -> ConfigurationError | None:
    """A certificate ``where`` presented that we do not accept, or else a failed TLS
    handshake (``advice`` says which settings to check); None when TLS is not the cause."""
    verify = _find(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        reason = getattr(verify, "verify_message", None) or str(verify)
        if getattr(verify, "verify_code", None) == _HOSTNAME_MISMATCH:
            return ConfigurationError(
                f"{where} presented a certificate for another host name ({reason}); connect by a "
                f"name the certificate lists, or turn host name checking off with {hostname_setting}"
            )
        return ConfigurationError(
            f"{where} presented a certificate that is not trusted ({reason}): point {ca_setting} "
            f"at the CA that signed the server's certificate"
        )
    tls = _find(exc, ssl.SSLError)
    if tls is not None:
        return ConfigurationError(f"the TLS handshake with {where} failed ({tls.reason or tls}): {advice}")
    return None


# -- Kafka ----------------------------------------------------------------------------


async def kafka_refusal(settings: Settings) -> ConfigurationError | None:
    """Why the bootstrap servers refuse a connection with these settings, if they do."""
    from aiokafka.conn import create_conn  # type: ignore[import-untyped]
    from aiokafka.errors import (  # type: ignore[import-untyped]
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    from resultlog.connections import kafka_security_args

    if settings.kafka_security_protocol == "PLAINTEXT":
        return None  # no login, no certificate: nothing a server could refuse us for
    args = kafka_security_args(settings)
    timeout_ms = int(min(settings.kafka_timeout_s, 5.0) * 1000)
    protocol = settings.kafka_security_protocol
    for hostport in settings.kafka_bootstrap_servers.split(","):
        host, _, port = hostport.strip().rpartition(":")
        where = f"Kafka at {host}:{port}"
        try:
            conn = await create_conn(host, int(port), request_timeout_ms=timeout_ms, **args)
        except SaslAuthenticationFailed as exc:
            return ConfigurationError(
                f"{where} refused the SASL login of user {settings.kafka_sasl_username!r} with "
                f"{settings.kafka_sasl_mechanism} ({redact_text(str(exc), [settings.kafka_sasl_password])}): "
                f"check RESULTLOG_KAFKA_SASL_USERNAME and RESULTLOG_KAFKA_SASL_PASSWORD (and "
                f"RESULTLOG_KAFKA_SASL_MECHANISM: SCRAM credentials exist per mechanism)"
            )
        except UnsupportedSaslMechanismError as exc:
            return ConfigurationError(f"{where}: {exc}; set RESULTLOG_KAFKA_SASL_MECHANISM to one it enables")
        except ssl.SSLError as exc:
            return _tls_refusal(
                exc, where, "RESULTLOG_KAFKA_SSL_CA_LOCATION",
                "RESULTLOG_KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM=none",
                f"RESULTLOG_KAFKA_SECURITY_PROTOCOL is {protocol}; is that listener TLS (SSL or "
                f"SASL_SSL)? If it requires a client certificate, set "
                f"RESULTLOG_KAFKA_SSL_CERTIFICATE_LOCATION and RESULTLOG_KAFKA_SSL_KEY_LOCATION")
        except Exception:  # noqa: BLE001 - not a refusal we can name: try the next server
            continue
        conn.close()
    return None


# -- Redis ----------------------------------------------------------------------------


def redis_refusal(exc: BaseException) -> ConfigurationError | None:
    """A redis-py failure that is a refusal: wrong ACL user or password, untrusted
    certificate, a TLS mismatch, or a command the ACL user may not run."""
    import redis.exceptions

    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthenticationWrongNumberOfArgsError):
        return ConfigurationError(
            f"Redis refused the login ({exc}): check the user and password in RESULTLOG_REDIS_URL "
            f"(redis[s]://user:password@host:port/db; an ACL user needs both)"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return ConfigurationError(
            f"the Redis ACL user of RESULTLOG_REDIS_URL lacks a permission resultlog needs ({exc}); "
            f"grant it the key pattern of RESULTLOG_REDIS_PREFIX, the pub/sub channels and "
            f"+@all (or at least +@read +@write +@scripting +@pubsub +@keyspace)"
        )
    if isinstance(exc, redis.exceptions.ResponseError) and "DB index is out of range" in str(exc):
        # The connection's SELECT: the URL names a database the server does not have.
        return ConfigurationError(
            f"Redis has no such database ({exc}): the /db of RESULTLOG_REDIS_URL must be "
            f"below the server's 'databases' setting (16 unless configured)"
        )
    return _tls_refusal(
        exc, "Redis", "the ssl_ca_certs of RESULTLOG_REDIS_URL",
        "ssl_check_hostname=false in RESULTLOG_REDIS_URL",
        "is RESULTLOG_REDIS_URL's port a TLS port (rediss://) or a plain one (redis://)? If the "
        "server requires a client certificate, add ssl_certfile and ssl_keyfile to the URL")


# -- PostgreSQL -----------------------------------------------------------------------


def postgres_refusal(exc: BaseException) -> ConfigurationError | None:
    """An asyncpg failure that is a refusal: authentication, certificate, or TLS."""
    import asyncpg  # type: ignore[import-untyped]

    if isinstance(exc, asyncpg.InvalidPasswordError):
        return ConfigurationError(
            f"PostgreSQL refused the login ({exc}): check the user and password in "
            f"RESULTLOG_POSTGRES_DSN"
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        hint = ("; the server accepts only TLS connections from here: add sslmode=verify-full "
                "(with sslrootcert) to RESULTLOG_POSTGRES_DSN") if "no encryption" in str(exc) else ""
        return ConfigurationError(
            f"PostgreSQL refused the connection ({exc}): check the user, database and sslmode "
            f"in RESULTLOG_POSTGRES_DSN{hint}"
        )
    found = _tls_refusal(
        exc, "PostgreSQL", "the sslrootcert of RESULTLOG_POSTGRES_DSN",
        "sslmode=verify-ca in RESULTLOG_POSTGRES_DSN",
        "check sslmode, sslcert and sslkey in RESULTLOG_POSTGRES_DSN")
    if found is not None:
        return found
    if "rejected SSL upgrade" in str(exc):
        return ConfigurationError(
            f"PostgreSQL does not offer TLS ({exc}), and the sslmode of RESULTLOG_POSTGRES_DSN "
            f"requires it: enable ssl on the server, or lower sslmode"
        )
    return None
