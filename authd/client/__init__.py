"""The client: kubectl's exec credential plugin (presign, token and credential caches)."""
