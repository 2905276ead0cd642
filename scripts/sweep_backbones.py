"""Build every model of the given providers (random init) and check the transfer mechanics.

For each model: it is built as a run builds it, every parameter is in exactly one uniquely
named layer group (at least two), a forward pass at the smallest size it accepts (trying
64, 96, 128, 160, 224 px and its own input size) gives ``(batch, num_features)``, and
:func:`tlplug.mechanics_check.check_mechanics` takes one SGD step per stage of a gradual
plan: frozen tensors bit-identical, trainable groups changed, optimizer state exactly for
the groups that trained. Prints one line per failure and pass/fail counts per provider.

Models are checked one at a time in a worker process, so one that exhausts memory is
reported and the sweep goes on. A model whose weights, gradients and momentum would not
fit in this machine's memory is counted as too large, not as a failure.

    python scripts/sweep_backbones.py torchvision timm [--pattern 'vit_*'] [--start NAME]
        [--stages N]  # at most N stages per model (default: one group per stage)
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

from tlplug.mechanics_check import check_mechanics
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import build_backbone, choose
from tlplug.recipe import Recipe

SIZES = (64, 96, 128, 160, 224)
TOO_LARGE = "too large"


def check(provider_name: str, name: str, stages: int | None, threads: int | None = None) -> str:
    """Return '' when ``name`` passes, else the reason it fails (or starts with TOO_LARGE)."""
    warnings.simplefilter("ignore")
    if threads:
        torch.set_num_threads(threads)
    provider = choose(PluginHost(entrypoints=False), "backbones", provider_name, {})
    needed = _bytes_needed(provider_name, name)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 3 * needed > 0.75 * available:
        return f"{TOO_LARGE}: its weights, gradients and momentum take {3 * needed / 2**30:.0f} GiB"
    torch.manual_seed(0)
    native = _native_size(provider.strategy.factory, name)
    last = ""
    for size in sorted({s for s in SIZES if s < native} | {native}):
        try:
            recipe = Recipe(backbone=f"{provider_name}:{name}", pretrained=False, img_size=size)
            backbone, _ = build_backbone(provider, recipe)
        except Exception as exc:  # some architectures only build at their own size
            last = f"create@{size}: {type(exc).__name__}: {str(exc)[:120]}"
            continue
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
        total = len(backbone.groups) + 1
        per_stage = 1 if not stages else max(1, -(-(total - 1) // max(1, stages - 1)))
        problems = check_mechanics(backbone, size, groups_per_stage=per_stage)
        return "; ".join(problems[:3])
    return last


def _native_size(provider, name: str) -> int:
    """The model's own input size, read from a weightless (meta device) build when possible."""
    try:
        with torch.device("meta"):
            return provider.create(name, False, None).data_config.input_size
    except Exception:
        return provider.create(name, False, None).data_config.input_size


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
    parser.add_argument("--stages", type=int, help="at most this many stages per model")
    parser.add_argument("--verbose", action="store_true", help="print passing models too")
    parser.add_argument("--shard", default="0/1", help="I/N: check every Nth model from the Ith")
    parser.add_argument("--threads", type=int, help="torch threads per model check")
    args = parser.parse_args()
    host = PluginHost(entrypoints=False)
    failed_total = 0
    for provider_name in args.providers:
        provider = host.registry("backbones").get(provider_name).factory
        names = [n for n in provider.list_models(args.pattern) if n >= args.start]
        shard, shards = (int(x) for x in args.shard.split("/"))
        names = names[shard::shards]
        counts = {"passed": 0, "failed": 0, TOO_LARGE: 0}
        start = time.perf_counter()
        pool = _pool()
        for name in names:
            try:
                reason = pool.submit(check, provider_name, name, args.stages, args.threads).result()
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
                if args.verbose:
                    print(f"ok {provider_name}:{name}", flush=True)
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
