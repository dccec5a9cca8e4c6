# fastgw container image. Two stages: the first compiles the Cython core into a wheel (it needs a C
# compiler and the Python headers), the second installs only that wheel and its dependencies on a slim
# Python, and runs as an unprivileged user. Build:  docker build -t fastgw .
#
# Runtime contract (docs/operations.md "Container"):
#   - the config is read from $FASTGW_CONFIG (/etc/fastgw/fastgw.toml): mount a ConfigMap or a file there;
#   - the image's own config there (deploy/container/fastgw.toml) listens on 0.0.0.0:8080 (public) and
#     0.0.0.0:9901 (admin: health, readiness, metrics), so `docker run -p 8080:8080` reaches the gateway;
#     a mounted config must do the same (the built-in defaults listen on 127.0.0.1 only);
#   - SIGTERM drains (server.drain), SIGHUP reloads (`fastgw reload` sends it: the image has no kill),
#     SIGINT stops fast. The supervisor is PID 1 and reaps its own worker processes.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# gcc for the Cython extensions; nothing of this stage reaches the runtime image. Debian package versions
# are not pinned: the base image tag fixes the release, and exact pins break at every point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Build requirements first: this layer is cached until pyproject.toml changes.
COPY pyproject.toml setup.py README.md* ./
RUN pip install --no-cache-dir "setuptools==80.9.0" "wheel==0.45.1" "Cython==3.3.0"
COPY fastgw ./fastgw
# --no-build-isolation: use the pinned Cython installed above; the wheel holds the compiled .so files.
RUN rm -f fastgw/_core/*.c fastgw/_core/*.so \
 && pip wheel --no-cache-dir --no-build-isolation --no-deps -w /wheels . \
 && pip wheel --no-cache-dir -w /wheels /wheels/fastgw-*.whl

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FASTGW_CONFIG=/etc/fastgw/fastgw.toml
# Install from the wheels built above only (no compiler here, no package index): the versions are the
# ones the build stage resolved, so there is nothing to pin on this line.
COPY --from=build /wheels /wheels
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links=/wheels fastgw \
 && rm -rf /wheels \
 && groupadd --system --gid 10001 fastgw \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fastgw
COPY --chown=root:root deploy/container/fastgw.toml /etc/fastgw/fastgw.toml
USER 10001:10001
# 8080: the public listener (HTTP/1.1); 9901: the admin listener (/healthz /readyz /metrics).
EXPOSE 8080 9901
# The slim image has no curl: probe /healthz with the interpreter that is there anyway. The admin address
# comes from FASTGW_ADMIN (default 127.0.0.1:9901, which reaches an admin listener bound to 0.0.0.0 too).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; a = os.environ.get('FASTGW_ADMIN', '127.0.0.1:9901'); sys.exit(0 if urllib.request.urlopen('http://' + a + '/healthz', timeout=2).status == 200 else 1)"]
# SIGTERM is the graceful drain (docker stop, Kubernetes); it is Docker's default, stated for clarity.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fastgw", "run"]
CMD []
