"""Ask EC2 instance metadata for the region: the one IMDS reader of the client and the server.

botocore's IMDSv2 fetcher (a session token, then the metadata path), one attempt within 1 s.
botocore is imported only when the question is asked, so `authd token` pays for it only on a
node with no region configured, and both commands read IMDS the same way, with the same
switches: `AWS_EC2_METADATA_DISABLED=true` skips it, `AWS_EC2_METADATA_SERVICE_ENDPOINT`
points it elsewhere (a local stand-in in tests).
"""

from __future__ import annotations

from collections.abc import Mapping


def imds_region(env: Mapping[str, str]) -> str:
    """The region instance metadata names (`placement/region`); "" when disabled or on failure."""
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return ""
    from botocore.utils import InstanceMetadataRegionFetcher

    class _RegionFetcher(InstanceMetadataRegionFetcher):  # type: ignore[misc]
        # placement/region answers the region directly; older IMDS only has the zone,
        # which botocore's parent class trims.
        _URL_PATH = "latest/meta-data/placement/region"

        def _get_region(self) -> str:
            token = self._fetch_metadata_token()
            response = self._get_request(
                url_path=self._URL_PATH, retry_func=self._default_retry, token=token
            )
            return str(response.text).strip()

    config = {}
    if env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        config["ec2_metadata_service_endpoint"] = env["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
    fetcher = _RegionFetcher(timeout=1, num_attempts=1, env=dict(env), config=config)
    return str(fetcher.retrieve_region() or "")
