"""Build every model of the given providers (random init) and check what tlplug relies on.

For each model: the provider builds it, every parameter is in exactly one uniquely named
layer group (at least two), and a forward pass at the smallest size it accepts (trying
64, 96, 128, 160, 224 px and its own input size) gives ``(batch, num_features)``. Prints one
line per failure and pass/fail counts per provider.

Models are checked one at a time in a worker process, so one that exhausts memory is
reported and the sweep goes on. A model whose parameters alone would not fit in this
machine's memory is counted as too large, not as a failure.

    python scripts/sweep_backbones.py torchvision timm [--pattern 'vit_*'] [--start NAME]
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import sys
import time
import warnings

import torch

from tlplug.backbone import check_groups
from tlplug.plugins import PluginHost

SIZES = (64, 96, 128, 160, 224)
TOO_LARGE = "too large"


def check(provider_name: str, name: str) -> str:
    """Return '' when ``name`` passes, else the reason it fails (or starts with TOO_LARGE)."""
    warnings.simplefilter("ignore")
    provider = PluginHost(entrypoints=False).registry("backbones").get(provider_name).factory
    needed = _bytes_needed(provider_name, name)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > 0.45 * available:
        return f"{TOO_LARGE}: its weights alone take {needed / 2**30:.0f} GiB"
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
        try:
            with torch.no_grad():
                out = backbone.module.eval()(torch.randn(2, 3, size, size))
        except Exception as exc:
            last = f"forward@{size}: {type(exc).__name__}: {str(exc)[:120]}"
            continue
        if tuple(out.shape) != (2, backbone.num_features):
            return f"features {tuple(out.shape)} != (2, {backbone.num_features})"
        if len(backbone.groups) < 2:
            return f"only {len(backbone.groups)} group(s)"
        return ""
    return last


def _bytes_needed(provider_name: str, name: str) -> int:
    """Bytes of ``name``'s fp32 weights, counted on the meta device (0 if unknown)."""
    try:
        with torch.device("meta"):
            if provider_name == "timm":
                import timm

                model = timm.create_model(name, num_classes=0)
            else:
                import torchvision

                model = torchvision.models.get_model(name.partition(".")[0])
        return 4 * sum(p.numel() for p in model.parameters())
    except Exception:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("providers", nargs="+")
    parser.add_argument("--pattern", default="*")
    parser.add_argument("--start", default="", help="skip names sorting before this one")
    args = parser.parse_args()
    host = PluginHost(entrypoints=False)
    failed_total = 0
    for provider_name in args.providers:
        provider = host.registry("backbones").get(provider_name).factory
        names = [n for n in provider.list_models(args.pattern) if n >= args.start]
        counts = {"passed": 0, "failed": 0, TOO_LARGE: 0}
        start = time.perf_counter()
        pool = _pool()
        for name in names:
            try:
                reason = pool.submit(check, provider_name, name).result()
            except futures.process.BrokenProcessPool:
                reason, pool = "the worker died (out of memory?)", _pool()
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:160]}"
            if reason.startswith(TOO_LARGE):
                counts[TOO_LARGE] += 1
                print(f"SKIP {provider_name}:{name}: {reason}", flush=True)
            elif reason:
                counts["failed"] += 1
                print(f"FAIL {provider_name}:{name}: {reason}", flush=True)
            else:
                counts["passed"] += 1
        pool.shutdown()
        failed_total += counts["failed"]
        print(
            f"{provider_name}: {counts['passed']} passed, {counts['failed']} failed, "
            f"{counts[TOO_LARGE]} too large for this machine, of {len(names)} "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    return 1 if failed_total else 0


def _pool() -> futures.ProcessPoolExecutor:
    return futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))


if __name__ == "__main__":
    sys.exit(main())
