# syntax=docker/dockerfile:1

# The iot-gateway image: the package and its dependencies are installed into a
# virtual environment in a builder stage; only that venv reaches the runtime
# stage, which has no pip, no build backend (it uninstalls the base image's)
# and no source tree.
#
#   docker build -t iot-gateway .
#   docker run --rm -v "$PWD/examples/demo.yaml:/etc/iot-gateway/config.yaml:ro" \
#       -e GATEWAY_MQTT__HOST=broker.example iot-gateway

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY devices/ devices/

# Build the wheel (in pip's isolated build environment), then install it with
# its dependencies into a venv created without pip: the builder's pip installs
# into it from outside, so the venv holds only what the gateway runs on.
# The venv path must be the same in both stages (scripts' shebangs point at it).
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install /wheels/*.whl


FROM ${PYTHON_IMAGE}

# python:3.11-slim ships pip and setuptools (and, in older builds, wheel) in
# the system Python; the gateway's venv has none of them and needs none, so
# they go (a package that is absent is skipped). A fixed numeric id, so
# orchestrators can verify the image runs as non-root. /var/lib/iot-gateway is
# for the command journal, the user's own: a named volume mounted there takes
# its owner (docker-compose.yml sets gateway.journal to a file in it).
RUN PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
    python -m pip uninstall --yes --quiet pip setuptools wheel \
 && groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
 && install -d -m 0700 -o gateway -g gateway /var/lib/iot-gateway

COPY --from=builder /opt/venv /opt/venv

# GATEWAY_CONFIG also lets `docker run IMAGE check-config` and the compose
# healthcheck find the file without repeating -c.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/etc/iot-gateway/config.yaml

USER 10001:10001

# The gateway drains on SIGTERM (up to gateway.shutdown_grace), publishes
# offline and exits 0; give it longer than that before SIGKILL (compose:
# stop_grace_period). Exec form keeps it PID 1, so the signal reaches it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["iot-gateway"]
CMD ["run", "-c", "/etc/iot-gateway/config.yaml"]
