# The serving image: vLLM's OpenAI image, plus this project (aibrix-download, aibrix-sidecar, aibrix-runtime)
# and Ray with the dashboard the sidecar and the runtime read cluster membership from. Every container in
# manifests/ runs this image and names its own command: the entrypoint is empty.
#
#   docker build -t aibrix-model-runtime:0.1.0-vllm0.32.0 \
#       --build-arg VCS_REF="$(git rev-parse HEAD)" --build-arg SOURCE="$(git remote get-url origin)" .
#
# BASE_IMAGE selects the base (the tag names the vLLM release). For a reproducible build pin it by digest as well:
#   --build-arg BASE_IMAGE=vllm/vllm-openai:v0.32.0@sha256:<digest>   (docker buildx imagetools inspect <tag>)
# Ray: the base's own when it carries one (only the dashboard's extras are added, at that version), else
# RAY_VERSION. The manifests' rayVersion must name the Ray the build prints. See manifests/README.md, "The image".

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
COPY constraints.txt /tmp/project-constraints.txt
# What the base installed stays as it is (vLLM's environment is released and tested as a whole): every
# installed distribution becomes a constraint, so a conflict fails the build instead of moving vLLM's
# dependencies; what the base lacks is pinned as CI tested it (constraints.txt). `ray[default]` adds the dashboard
# (the sidecar and the runtime read membership from it) at the base's own Ray version, or RAY_VERSION when the base
# has no Ray.
RUN python3 -c 'import importlib.metadata as m, re, sys; names = {(d.metadata["Name"] or "").lower().replace("_", "-"): d.version for d in m.distributions()}; names.pop("", None); [names.pop(n, None) for n in ("pip", "setuptools", "wheel")]; pins = [l.strip() for l in open("/tmp/project-constraints.txt") if re.match(r"^[A-Za-z0-9]", l)]; extra = [p for p in pins if p.split("==")[0].lower().replace("_", "-") not in names]; print("\n".join([f"{n}=={v}" for n, v in sorted(names.items())] + extra))' \
        > /tmp/base-constraints.txt \
    && base_ray="$(sed -n 's/^ray==//p' /tmp/base-constraints.txt)" \
    && echo "Ray: ${base_ray:-none in the base, installing ${RAY_VERSION}}" \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --constraint /tmp/base-constraints.txt \
        "ray[default]==${base_ray:-${RAY_VERSION}}" /tmp/dist/*.whl \
    && rm -rf /tmp/dist /tmp/base-constraints.txt /tmp/project-constraints.txt \
    && aibrix-download --help > /dev/null && aibrix-sidecar --help > /dev/null && aibrix-runtime --help > /dev/null \
    && aibrix_download --help > /dev/null && aibrix_runtime --help > /dev/null \
    && python3 -c 'import ray, ray.dashboard; print("ray", ray.__version__, "(set rayVersion in the manifests to it)")'

# The user the manifests' non-root containers name (runAsUser: 10001; vllm serve on one node). The image itself
# runs as root by default, like vllm/vllm-openai and AIBrix's runtime image, whose manifests it drops into: their
# init containers download into a hostPath the kubelet created root-owned, with no securityContext of their own.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/aibrix --shell /usr/sbin/nologin aibrix
ENTRYPOINT []
