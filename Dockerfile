# The router's image, for helm/dicom-router or any container runtime:
#   docker build -t dicom-router:0.1.0 .
# One image for both roles: `serve` (the SCP) and `worker`; the configuration comes
# from $ROUTER_CONFIG (the chart mounts it at /etc/dicom-router/router.yaml).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The router needs no root: it listens on unprivileged ports (a Service maps 104).
RUN groupadd --gid 10001 router \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin router

WORKDIR /opt/dicom-router
COPY pyproject.toml README.md ./
COPY router ./router
# Compiled once here: the chart runs the root file system read-only.
RUN pip install . && python -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

USER 10001:10001
EXPOSE 11112 2762 9102 9103
ENTRYPOINT ["dicom-router"]
CMD ["serve"]
