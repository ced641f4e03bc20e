# The serving image: vLLM's OpenAI image, plus this project (aibrix-download, aibrix-sidecar, aibrix-runtime)
# and Ray with the dashboard the sidecar and the runtime read cluster membership from. Every container in
# manifests/ runs this image and names its own command: the entrypoint is empty.
#
#   docker build -t aibrix-model-runtime:0.1.0-vllm0.32.0 \
#       --build-arg VCS_REF="$(git rev-parse HEAD)" --build-arg SOURCE="$(git remote get-url origin)" .
#
# BASE_IMAGE selects the base (the tag names the vLLM release; RAY_VERSION must be the Ray that base carries,
# if it carries one: the build stops otherwise). See manifests/README.md, "The image".

ARG BASE_IMAGE=vllm/vllm-openai:v0.32.0

# ---- 1. the wheel, in a throwaway stage: pip's isolated build environment (setuptools, wheel) stays here.
FROM ${BASE_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY downloader ./downloader
COPY sidecar ./sidecar
COPY runtime ./runtime
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---- 2. the image
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG RAY_VERSION=2.60.0
ARG VCS_REF=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="aibrix-model-runtime" \
      org.opencontainers.image.description="vLLM with aibrix-download, aibrix-sidecar and aibrix-runtime" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

COPY --from=wheel /dist/ /tmp/dist/
# What the base installed stays as it is (vLLM's environment is released and tested as a whole): every
# installed distribution becomes a constraint, so a conflict fails the build instead of moving vLLM's
# dependencies. A base that carries Ray must carry RAY_VERSION; `ray[default]` adds the dashboard.
RUN python3 -c 'import importlib.metadata as m; names = {(d.metadata["Name"] or "").lower(): d.version for d in m.distributions()}; print("\n".join(f"{n}=={v}" for n, v in sorted(names.items()) if n not in ("", "pip", "setuptools", "wheel")))' \
        > /tmp/base-constraints.txt \
    && if grep -q '^ray==' /tmp/base-constraints.txt && ! grep -qx "ray==${RAY_VERSION}" /tmp/base-constraints.txt; then \
        echo "the base has $(grep '^ray==' /tmp/base-constraints.txt); build with --build-arg RAY_VERSION=<that version>" >&2; \
        exit 1; \
    fi \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --constraint /tmp/base-constraints.txt \
        "ray[default]==${RAY_VERSION}" /tmp/dist/*.whl \
    && rm -rf /tmp/dist /tmp/base-constraints.txt \
    && aibrix-download --help > /dev/null && aibrix-sidecar --help > /dev/null && aibrix-runtime --help > /dev/null \
    && python3 -c 'import ray, ray.dashboard; print("ray", ray.__version__)'

# Non-root by default. The manifests run the downloader as uid 0 (to write the root-owned hostPath, with no
# capabilities) and the Ray containers as root (IPC_LOCK only takes effect for root); vllm serve runs as this user.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/aibrix --shell /usr/sbin/nologin aibrix
USER 10001:10001
WORKDIR /home/aibrix
ENTRYPOINT []
