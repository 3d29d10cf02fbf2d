"""A fake kube-apiserver in parts; tests import it from tests/fakes/apiserver.py."""
