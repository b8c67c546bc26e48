# The resultlog image: the `resultlog` command (processor, replay, verify, stats, ...).
# Runs `resultlog process` by default; docs/operations.md says how to deploy it.
#
#   docker build -t resultlog .
#   docker run --rm -e RESULTLOG_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 \
#       -e RESULTLOG_REDIS_URL=redis://redis:6379/0 \
#       -e RESULTLOG_POSTGRES_DSN=postgresql://user:password@postgres:5432/resultlog \
#       -p 9464:9464 resultlog
#
# Every dependency ships wheels for x86_64 and aarch64 on this Python: no compiler.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY resultlog resultlog
COPY schemas schemas
COPY producers producers
COPY processors processors
COPY views views
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/resultlog --create-home resultlog
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels resultlog && rm -rf /wheels
USER resultlog
WORKDIR /var/lib/resultlog
# faust's local state goes under RESULTLOG_DEV_DIR (the processor's only files: the data
# lives in Kafka, Redis and PostgreSQL). Metrics and health listen on every interface of
# the container (docs/operations.md).
ENV PYTHONUNBUFFERED=1 \
    RESULTLOG_DEV_DIR=/var/lib/resultlog \
    RESULTLOG_METRICS_HOST=0.0.0.0 \
    RESULTLOG_METRICS_PORT=9464
EXPOSE 9464
# Live while the fold runs and the event loop answers (/health/ready is for rollouts).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ['RESULTLOG_METRICS_PORT'], timeout=4)"
ENTRYPOINT ["resultlog"]
CMD ["process"]
