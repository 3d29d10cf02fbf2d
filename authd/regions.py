"""The AWS regions with an STS endpoint, per partition: the hosts a token may name.

Data only, taken from botocore's endpoints.json (1.44). `authd.token` accepts a regional STS host
only for these regions, the server's own, and those added with `--extra-sts-region`.
"""

from __future__ import annotations

# The regions with an STS endpoint, per partition, from botocore's endpoints.json (1.44). Only
# these (and regions the operator adds with `--extra-sts-region`) may name an STS host: a pattern
# alone let `sts.<anything>.amazonaws.com` through, and `sts.s3.amazonaws.com` is S3's host.
KNOWN_REGIONS: dict[str, frozenset[str]] = {
    "aws": frozenset(
        {
            "af-south-1",
            "ap-east-1",
            "ap-east-2",
            "ap-northeast-1",
            "ap-northeast-2",
            "ap-northeast-3",
            "ap-south-1",
            "ap-south-2",
            "ap-southeast-1",
            "ap-southeast-2",
            "ap-southeast-3",
            "ap-southeast-4",
            "ap-southeast-5",
            "ap-southeast-6",
            "ap-southeast-7",
            "ca-central-1",
            "ca-west-1",
            "eu-central-1",
            "eu-central-2",
            "eu-north-1",
            "eu-south-1",
            "eu-south-2",
            "eu-west-1",
            "eu-west-2",
            "eu-west-3",
            "il-central-1",
            "me-central-1",
            "me-south-1",
            "mx-central-1",
            "sa-east-1",
            "us-east-1",
            "us-east-2",
            "us-west-1",
            "us-west-2",
        }
    ),
    "aws-cn": frozenset({"cn-north-1", "cn-northwest-1"}),
    "aws-us-gov": frozenset({"us-gov-east-1", "us-gov-west-1"}),
    "aws-iso": frozenset({"us-iso-east-1", "us-iso-west-1"}),
    "aws-iso-b": frozenset({"us-isob-east-1", "us-isob-west-1"}),
    "aws-iso-e": frozenset({"eu-isoe-west-1"}),
    "aws-iso-f": frozenset({"us-isof-east-1", "us-isof-south-1"}),
    "aws-eusc": frozenset({"eusc-de-east-1"}),
}
