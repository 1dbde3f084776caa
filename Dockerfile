# syntax=docker/dockerfile:1
# One image for every imagegen process: worker, beat, flower, simulator, `db upgrade`, the CLI.
#   docker build -t imagegen-worker .
#   docker run --rm imagegen-worker --help
# docker-compose.yml builds it and picks the subcommand per service.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: resolve the locked dependencies and install the project into /app/.venv -----
FROM ${PYTHON_IMAGE} AS builder

# The Makefile's pin, from PyPI like the Makefile installs it.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src

# Third-party dependencies first: this layer is reused until uv.lock or a pyproject changes.
COPY pyproject.toml uv.lock ./
COPY api_schema/pyproject.toml api_schema/pyproject.toml
RUN uv sync --frozen --no-dev --no-editable --no-install-workspace

# Then the workspace itself, installed as wheels (not editable), so the runtime stage needs
# only the venv. The root wheel carries alembic/ as worker/_migrations for `imagegen db upgrade`.
COPY README.md ./
COPY alembic alembic
COPY api_schema api_schema
COPY worker worker
COPY simulator simulator
RUN uv sync --frozen --no-dev --no-editable

# --- runtime: the venv and an unprivileged user, nothing else ------------------------------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 imagegen \
    && useradd --system --uid 10001 --gid imagegen --no-create-home \
        --home-dir /var/lib/imagegen --shell /usr/sbin/nologin imagegen \
    && install -d -o imagegen -g imagegen /var/lib/imagegen /data/images

COPY --from=builder /app/.venv /app/.venv

# IMAGEGEN_STATE_DIR holds beat's schedule file; /data/images is where compose mounts the
# result volume (a fresh named volume takes this directory's owner, so workers can write).
ENV PATH=/app/.venv/bin:$PATH \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IMAGEGEN_STATE_DIR=/var/lib/imagegen

WORKDIR /var/lib/imagegen
USER 10001:10001

ENTRYPOINT ["imagegen"]
CMD ["worker"]
