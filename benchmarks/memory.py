"""Memory readings shared by the benchmarks (Linux /proc)."""


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB, e.g. "VmRSS" (resident now) or "VmHWM" (peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")
