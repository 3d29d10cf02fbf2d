"""authd: the AWS IAM Authenticator for Kubernetes, in Python."""

__version__ = "0.1.0"
__commit__ = ""
