# One image for the api (default CMD), the worker (`python -m worker`)
# and the one-shot migrations (`python -m service migrate`).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    API_WORKERS=1 \
    FORWARDED_ALLOW_IPS=127.0.0.1

WORKDIR /app

# Dependencies first, against empty package stubs, so code edits don't reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir service worker \
    && touch service/__init__.py worker/__init__.py \
    && pip install --no-cache-dir -e .

# Editable install: the code runs from /app, so /app/sql and /app/migrations sit
# next to /app/service where service/db.py looks for them.
COPY . .

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
USER app

EXPOSE 8000

# X-Forwarded-For is believed only from FORWARDED_ALLOW_IPS (the rate limits count per client address): behind a load
# balancer, set it to the balancer's address; never "*" where clients can reach the container directly.
# Several API workers share their metrics through files in a directory emptied at each start (prometheus-client's
# multiprocess mode).
CMD ["sh", "-c", "if [ \"${API_WORKERS:-1}\" -gt 1 ]; then export PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus; rm -rf \"$PROMETHEUS_MULTIPROC_DIR\"; mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\"; fi; exec uvicorn service.api.app:app --host 0.0.0.0 --port 8000 --no-access-log --no-server-header --workers ${API_WORKERS:-1} --forwarded-allow-ips \"${FORWARDED_ALLOW_IPS:-127.0.0.1}\""]
