# Minimal for now (issue 6 builds the real image): the downloader on a slim Python base.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY downloader ./downloader
COPY sidecar ./sidecar
COPY runtime ./runtime
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /
ENTRYPOINT []
