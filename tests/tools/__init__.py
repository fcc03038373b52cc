import shutil


def no_namespaces(e: Exception) -> bool:
    """A SandboxUnavailable that means this machine cannot isolate code (no unshare, namespaces
    not permitted): the sandbox tests skip. Any other reason (a path the jail failed to place,
    found when a checkout lived in /tmp) is a bug they must report."""
    text = str(e).lower()
    return shutil.which("unshare") is None or "not permitted" in text or "operation not permitted" in text
