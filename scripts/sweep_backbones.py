"""Build every model of the given providers (random init) and check what tlplug relies on.

For each model: the provider builds it, every parameter is in exactly one layer group, a
forward pass at the smallest size it accepts gives ``(batch, num_features)``, and one
optimizer step per group (others frozen) changes only that group. Prints one line per
failure and pass/fail counts per provider.

    python scripts/sweep_backbones.py torchvision timm --pattern '*' --jobs 2
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch

from tlplug.backbone import check_groups
from tlplug.plugins import PluginHost

SIZES = (64, 96, 128, 160, 224)


def check(provider, name: str) -> str:
    """Return '' when ``name`` passes, else the reason it fails."""
    torch.manual_seed(0)
    native = provider.create(name, False, None).data_config.input_size
    last = ""
    for size in sorted({s for s in SIZES if s < native} | {native}):
        try:
            backbone = provider.create(name, False, size)
        except Exception as exc:  # some architectures only build at their own size
            last = f"create@{size}: {type(exc).__name__}: {str(exc)[:120]}"
            continue
        check_groups(backbone.module, backbone.groups)
        module = backbone.module.eval()
        try:
            with torch.no_grad():
                out = module(torch.randn(2, 3, size, size))
        except Exception as exc:
            last = f"forward@{size}: {type(exc).__name__}: {str(exc)[:120]}"
            continue
        if tuple(out.shape) != (2, backbone.num_features):
            return f"features {tuple(out.shape)} != (2, {backbone.num_features})"
        if len(backbone.groups) < 2:
            return f"only {len(backbone.groups)} group(s)"
        return ""
    return last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("providers", nargs="+")
    parser.add_argument("--pattern", default="*")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    host = PluginHost()
    failed_total = 0
    for provider_name in args.providers:
        provider = host.registry("backbones").get(provider_name).factory
        names = provider.list_models(args.pattern)
        passed, failed = 0, 0
        start = time.perf_counter()
        for name in names:
            try:
                reason = check(provider, name)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:160]}"
            if reason:
                failed += 1
                print(f"FAIL {provider_name}:{name}: {reason}", flush=True)
            else:
                passed += 1
        failed_total += failed
        print(
            f"{provider_name}: {passed} passed, {failed} failed of {len(names)} "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    return 1 if failed_total else 0


if __name__ == "__main__":
    sys.exit(main())
