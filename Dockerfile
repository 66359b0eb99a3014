# One image for every gateway service (and the simulators); compose picks the command.
#   docker build -t lorawan-ws-gateway .
#   docker run --rm lorawan-ws-gateway python -m services.ingest --help
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Pinned dependencies first, in their own layer: code changes do not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY simulators ./simulators
RUN pip install --no-deps . \
 && useradd --system --uid 10001 --home-dir /var/lib/lorawan-gateway --create-home gateway

# Not root: nothing here needs it, and the state directory (replay history) is the
# only place a service writes.
USER gateway

EXPOSE 8765
CMD ["python", "-m", "services.wsfanout"]
