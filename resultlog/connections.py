"""Settings turned into connection arguments: the one place that knows how resultlog
connects to Kafka, Redis and PostgreSQL, TLS and credentials included.

A file a setting names that is missing or unreadable is a :class:`ConfigurationError`
naming the setting, before any connection is tried.

Why failures to connect are told apart from "unreachable": see resultlog/refusals.py.
"""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from resultlog.errors import ConfigurationError
from resultlog.settings import Settings

# Query parameters of the Redis URL (redis-py's names) and of the PostgreSQL DSN
# (libpq's) that name files.
REDIS_FILE_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
POSTGRES_FILE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey")


def check_file(path: str, setting: str, what: str) -> None:
    """``path`` is a readable file, or a :class:`ConfigurationError` naming ``setting``."""
    if not os.path.isfile(path):
        raise ConfigurationError(f"{setting} names {what} {path!r}, which does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigurationError(f"{setting} names {what} {path!r}, which this user cannot read")


def _checked_url(url: str, setting: str, file_parameters: tuple[str, ...]) -> str:
    """``url``, once the files its query parameters ``file_parameters`` name are readable."""
    query = dict(parse_qsl(urlsplit(url).query))
    for name in file_parameters:
        if name in query:
            check_file(query[name], f"{setting} (its {name})", "the file")
    return url


# -- Kafka ----------------------------------------------------------------------------


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every Kafka connection; None without TLS.

    ``kafka_ssl_ca_location`` empty: the system's CAs (a managed service's certificate
    is signed by a public CA). Host names are checked unless
    ``kafka_ssl_endpoint_identification_algorithm`` is ``none`` (or empty).
    """
    if not settings.kafka_uses_ssl:
        return None
    ca = settings.kafka_ssl_ca_location
    if ca:
        check_file(ca, "RESULTLOG_KAFKA_SSL_CA_LOCATION", "the CA file (ssl.ca.location)")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"RESULTLOG_KAFKA_SSL_CA_LOCATION {ca!r} holds no PEM certificate Python can read: {exc}"
        ) from None
    context.check_hostname = settings.kafka_ssl_endpoint_identification_algorithm == "https"
    cert, key = settings.kafka_ssl_certificate_location, settings.kafka_ssl_key_location
    if cert:
        check_file(cert, "RESULTLOG_KAFKA_SSL_CERTIFICATE_LOCATION", "the client certificate")
        check_file(key, "RESULTLOG_KAFKA_SSL_KEY_LOCATION", "the client key")
        try:
            context.load_cert_chain(cert, key, password=settings.kafka_ssl_key_password or None)
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"the client certificate RESULTLOG_KAFKA_SSL_CERTIFICATE_LOCATION={cert!r} and key "
                f"RESULTLOG_KAFKA_SSL_KEY_LOCATION={key!r} cannot be loaded ({exc.reason or exc}): "
                f"check that they are PEM, belong together, and that RESULTLOG_KAFKA_SSL_KEY_PASSWORD "
                f"is the key's passphrase if it has one"
            ) from None
    return context


def kafka_security_args(settings: Settings) -> dict[str, Any]:
    """aiokafka's keyword arguments for ``security.protocol``, SASL and TLS."""
    args: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        args["ssl_context"] = context
    if settings.kafka_uses_sasl:
        args.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    return args


def kafka_client_args(settings: Settings, bootstrap_servers: str | None = None) -> dict[str, Any]:
    """What every aiokafka producer, consumer and admin client is made with:
    ``bootstrap_servers`` (default ``settings.kafka_bootstrap_servers``) and security."""
    servers = settings.kafka_bootstrap_servers if bootstrap_servers is None else bootstrap_servers
    return {"bootstrap_servers": servers, **kafka_security_args(settings)}


def faust_broker_credentials(settings: Settings) -> Any:
    """faust's ``broker_credentials`` for the same security (None for PLAINTEXT).

    faust passes them on to every aiokafka client it makes (its consumer, producer and
    admin), through ``credentials_to_aiokafka_auth``.
    """
    import faust

    context = kafka_ssl_context(settings)
    if settings.kafka_uses_sasl:
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


# -- Redis and PostgreSQL -------------------------------------------------------------


def redis_url(settings: Settings) -> str:
    """``settings.redis_url``, checked. It carries everything (scheme ``rediss`` for TLS,
    the ACL user and password, the TLS files): redis-py reads it as it is."""
    return _checked_url(settings.redis_url, "RESULTLOG_REDIS_URL", REDIS_FILE_PARAMETERS)


def postgres_dsn(settings: Settings) -> str:
    """``settings.postgres_dsn``, checked. asyncpg reads ``sslmode`` (``verify-full``
    checks the server's certificate and host name) and the TLS files from it as libpq does."""
    return _checked_url(settings.postgres_dsn, "RESULTLOG_POSTGRES_DSN", POSTGRES_FILE_PARAMETERS)
