# authd image: a drop-in for upstream's aws-iam-authenticator image (docs/deploy-kubernetes.md).
#
# - Two stages: the builder installs authd and its dependencies into a virtualenv at /opt/authd;
#   the runtime stage copies only that virtualenv onto a slim Python. No compiler, pip cache or
#   source tree reaches the runtime image.
# - Runs as UID:GID 10000:10000, the user kops' nodeup creates on the host and chowns the
#   state dir's cert.pem/key.pem to.
# - Works with a read-only root filesystem: at run time authd writes only to the state dir
#   (cert.pem, key.pem), the directory of --generate-kubeconfig (skipped with
#   --kubeconfig-pregenerated=true) and $TMPDIR (/tmp: a tmpfs or emptyDir; the Kubernetes
#   backends put a client certificate from a kubeconfig there). Bytecode is compiled at build
#   time and PYTHONDONTWRITEBYTECODE stops Python from trying to write more.
# - `authd` is the entrypoint; DaemonSets that pass only `args: [server, ...]` work unchanged,
#   and those that run `/aws-iam-authenticator` by path find it too.
#
# Build: docker build -t authd:0.1.0 --build-arg VERSION=0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/authd
COPY setup.cfg pyproject.toml README.md ./
COPY authd ./authd
# setup.cfg bounds every dependency; pip compiles each module's bytecode as it installs.
RUN /opt/authd/bin/pip install --no-cache-dir ./ \
 && /opt/authd/bin/python -m pip uninstall -y -q pip setuptools \
 && /opt/authd/bin/python -m compileall -q /opt/authd/lib

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="authd" \
      org.opencontainers.image.description="AWS IAM Authenticator for Kubernetes: TokenReview webhook and kubectl credential client, in Python" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/authd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
COPY --from=build /opt/authd /opt/authd
# The state dir and the kubeconfig's directory exist, owned by 10000, so that a fresh volume
# (docker) takes that owner; on Kubernetes they are hostPath mounts.
RUN ln -s /opt/authd/bin/aws-iam-authenticator /aws-iam-authenticator \
 && useradd --uid 10000 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin aws-iam-authenticator \
 && install -d -o 10000 -g 10000 -m 0700 /var/aws-iam-authenticator \
 && install -d -o 10000 -g 10000 -m 0755 /etc/kubernetes/aws-iam-authenticator
VOLUME ["/var/aws-iam-authenticator", "/etc/kubernetes/aws-iam-authenticator"]
USER 10000:10000
EXPOSE 21362 21363
ENTRYPOINT ["authd"]
CMD ["server", "--config=/etc/aws-iam-authenticator/config.yaml", "--state-dir=/var/aws-iam-authenticator", "--generate-kubeconfig=/etc/kubernetes/aws-iam-authenticator/kubeconfig.yaml"]
