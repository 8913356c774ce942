# MONAI Label 0.8.5 server with the project's bundles (annotation assist), from the same lock as CI
# (requirements-label.txt: CUDA build of torch 2.13.0, runs on CPU too).
#
#   docker build -f docker/label-server.Dockerfile -t xattnres-label-server .
#   docker run --rm -p 127.0.0.1:8000:8000 -v /path/to/work:/data [--gpus all] xattnres-label-server
#
# /data/studies: the NIfTI studies (labels are saved under /data/studies/labels); /data/model.pt: the trained weights
# of the Synapse bundle; /data/app: the MONAI Label app (created on first start; keeps weights fine-tuned through
# MONAI Label). The server listens on 0.0.0.0 inside the container: publish the port on the host's loopback only.
FROM python:3.11.7-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/xattnres

COPY requirements-label.txt ./
RUN python -m pip install --no-cache-dir --no-deps -r requirements-label.txt

COPY setup.cfg pyproject.toml README.md ./
COPY xattnres_monai ./xattnres_monai
RUN python -m pip install --no-cache-dir --no-deps --no-build-isolation . \
    && python -m xattnres_monai.tools.label_server check-env

COPY bundles ./bundles

RUN useradd --create-home --uid 1000 label \
    && mkdir /data \
    && chown label:label /data
USER 1000:1000
VOLUME ["/data"]
EXPOSE 8000

ENTRYPOINT ["python", "-m", "xattnres_monai.tools.label_server"]
CMD ["start", "--bundle", "/opt/xattnres/bundles/synapse_ct_segmentation", "--weights", "/data/model.pt", \
     "--studies", "/data/studies", "--app", "/data/app", "--host", "0.0.0.0", "--port", "8000"]
