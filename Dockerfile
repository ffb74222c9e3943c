# syntax=docker/dockerfile:1
#
# Image for distrec cluster nodes (Ray head, GPU workers, KubeRay pods, RayJob submitters).
#
#   docker build -t REGISTRY/distrec:TAG .                               # GPU (CUDA torch + fbgemm-gpu)
#   docker build --build-arg FLAVOR=cpu -t REGISTRY/distrec:TAG-cpu .    # CPU (fbgemm-gpu-cpu)
#
# Base: the official Ray image, tagged {ray version}-{python}-{platform}, e.g. 2.60.0-py311-cu128,
# 2.60.0-py311-gpu (an alias of one cuXXX) or 2.60.0-py311-cpu (hub.docker.com/r/rayproject/ray;
# the scheme is described in ray-project/ray docker/ray/README.md). It already holds Ray 2.60.0
# with its dashboard / Jobs dependencies (ray[default]) and runs as the non-root user `ray`
# (uid 1000, home /home/ray). Check the tag exists before a release (`docker manifest inspect`);
# if a given cuXXX tag is missing, pick another one: torch and fbgemm bring their own CUDA runtime
# as wheels, so the base image's CUDA only has to be runnable by the node's driver.
#
# The torch / fbgemm-gpu / torchrec versions must match exactly (an ABI mismatch shows up as
# "undefined symbol" on import). torch and the CUDA fbgemm-gpu come from the same PyTorch index
# (one CUDA build for both); torchrec is installed with --no-deps because its metadata requires
# the CUDA fbgemm-gpu, which must not be pulled onto CPU images. A constraints file pins torch and
# ray for every later pip call so that no dependency can silently replace them.
#
# No secrets are baked in: the Ray auth token reaches the containers at run time (RAY_AUTH_TOKEN
# from a Kubernetes Secret, or ~/.ray/auth_token mounted by the cluster launcher); see
# cluster/README.md. .dockerignore keeps .git, .venv, runs/, data/ and token files out of the context.

ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
# gpu | cpu
ARG FLAVOR=gpu
# CUDA build of torch and fbgemm-gpu, and of the base image (FBGEMM's release table lists the
# CUDA versions each release supports; 12.6 / 12.8 / 12.9 / 13.0 for recent ones).
ARG CUDA=cu128

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA} AS base-gpu
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu AS base-cpu
# BuildKit only pulls the stage that FLAVOR selects.
FROM base-${FLAVOR}

ARG RAY_VERSION
ARG FLAVOR
ARG CUDA
ARG TORCH_VERSION=2.13.0
ARG FBGEMM_VERSION=1.8.0
ARG TORCHREC_VERSION=1.8.0
# Empty: https://download.pytorch.org/whl/${CUDA} on GPU, https://download.pytorch.org/whl/cpu on CPU.
ARG TORCH_INDEX_URL=""

USER ray
WORKDIR /home/ray
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/home/ray/constraints.txt \
    PYTHONUNBUFFERED=1

RUN printf 'torch==%s\nray==%s\n' "${TORCH_VERSION}" "${RAY_VERSION}" > /home/ray/constraints.txt \
 && python -c "import ray, sys; assert ray.__version__ == '${RAY_VERSION}', ray.__version__; print(sys.version)"

# 1. torch + fbgemm (the heavy layer; rebuilt only when these arguments change).
RUN set -eux; \
    if [ "${FLAVOR}" = "gpu" ]; then \
        index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/${CUDA}}"; \
        pip install --index-url "${index}" "torch==${TORCH_VERSION}" "fbgemm-gpu==${FBGEMM_VERSION}"; \
    elif [ "${FLAVOR}" = "cpu" ]; then \
        index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"; \
        pip install --index-url "${index}" "torch==${TORCH_VERSION}"; \
        pip install "fbgemm-gpu-cpu==${FBGEMM_VERSION}"; \
    else \
        echo "FLAVOR must be gpu or cpu, not ${FLAVOR}" >&2; exit 2; \
    fi

# 2. torchrec without its fbgemm-gpu requirement, then the rest of its dependencies
#    (the versions that were verified together on the development machines).
RUN pip install --no-deps "torchrec==${TORCHREC_VERSION}" \
 && pip install "tensordict==0.15.3" "torchmetrics==1.0.3" "pyre-extensions==0.0.32" "iopath==0.1.10" "tqdm>=4.66"

# 3. distrec itself, editable so that a job's uploaded working_dir and the image share one layout.
COPY --chown=ray:users . /home/ray/distrec
RUN pip install -e /home/ray/distrec \
 && python -c "import torch, ray, distrec; print('torch', torch.__version__, 'ray', ray.__version__)" \
 && if [ "${FLAVOR}" = "cpu" ]; then python -c "import torchrec, fbgemm_gpu; print('torchrec ok')"; fi
# (The CUDA fbgemm-gpu is import-checked on a GPU node instead: `docker run --gpus all IMAGE
#  python -c "import torchrec, torch; print(torch.cuda.is_available())"`; the build host has no driver.)

WORKDIR /home/ray/distrec
