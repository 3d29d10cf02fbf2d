"""The TokenReview webhook server: wire format, HTTP layer, TLS material, kubeconfig, daemon.

httpx's package imports its command-line client (`httpx._main`) whenever that client's optional
packages are installed, loading click and pygments (about 2 MiB of the daemon's RSS) that the
server never uses. Marking the module absent before the first `import httpx` makes httpx take
its own fallback for a missing CLI; a process that already imported it is left alone
(docs/memory.md).
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
