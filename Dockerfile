# authd image: a drop-in for upstream's aws-iam-authenticator image. DaemonSets that pass only
# `args: [server, ...]` work unchanged (the entrypoint is the same command), and so do those
# that run `/aws-iam-authenticator` by path. Runs as UID 10000, as kops' nodeup expects.
FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY authd ./authd
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN ln -s /usr/local/bin/aws-iam-authenticator /aws-iam-authenticator \
 && useradd --uid 10000 --user-group --no-create-home --shell /usr/sbin/nologin aws-iam-authenticator
USER 10000:10000
EXPOSE 21362
ENTRYPOINT ["aws-iam-authenticator"]
CMD ["server", "--config=/etc/aws-iam-authenticator/config.yaml", "--state-dir=/var/aws-iam-authenticator", "--generate-kubeconfig=/etc/kubernetes/aws-iam-authenticator/kubeconfig.yaml"]
