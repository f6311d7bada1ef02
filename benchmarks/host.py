"""The machine a figure was measured on: every benchmark names its CPU (figures differ by CPU class)."""

from __future__ import annotations


def cpu_name() -> str:
    """The CPU as /proc/cpuinfo names it, with its family/model and the flags our figures depend on
    (native bfloat16: avx512_bf16, amx_bf16; avx2)."""
    facts = {}
    try:
        with open("/proc/cpuinfo") as f:  # the first processor's block
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                facts.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in facts:
        import platform

        return platform.processor() or "unknown CPU"
    flags = [x for x in ("avx512_bf16", "amx_bf16", "avx2") if x in facts.get("flags", "").split()]
    return f"{facts['model name']} (family {facts.get('cpu family')} model {facts.get('model')}; {', '.join(flags)})"
