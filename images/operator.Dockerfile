# The operator image: kopf and egt's spec, store and API-client code; no ML engine (the
# operator never imports torch or transformers, and a test keeps it so). Built from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/egt-dev/egt-operator:0.1.0 .
# images/README.md has the build commands and tags; charts/egt runs it.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY egt ./egt
COPY jobs ./jobs
COPY operator ./operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# MALLOC_ARENA_MAX: glibc gives each worker thread a malloc arena of its own; two keep the resident
# memory of a threaded, long-running Python process down (bench/operator.py runs the operator so).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_ARENA_MAX=2
COPY --from=build /wheels /wheels
# The core dependencies and the operator extra (kopf), at the versions pyproject.toml pins.
RUN pip install --no-cache-dir "$(ls /wheels/egt-*.whl)[operator]" \
 && rm -rf /wheels \
 && groupadd --gid 1000 egt \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin egt
# A numeric user, so that the kubelet can enforce runAsNonRoot.
USER 1000:1000
# 8080: Prometheus metrics (EGT_METRICS_PORT); 8081: kopf's liveness endpoint (the chart's probes).
EXPOSE 8080 8081
CMD ["kopf", "run", "--standalone", "--liveness=http://0.0.0.0:8081/healthz", "-m", "egt_operator.handlers", "--all-namespaces"]
