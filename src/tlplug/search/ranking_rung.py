"""``tlplug search`` over several backbones: a rank (:mod:`tlplug.search.rank`) is its first
rung. Every candidate backbone is scored by LogME on one forward pass (or its features kept
from an earlier rank); the best one is kept, and its schedule, LR and LR decay are searched
as for one backbone (:mod:`tlplug.search.driver`). The rank's table goes to
``search/rank.json`` and ``search/rank.png`` of the run directory, and config.json's
``search.ranking`` names what was ranked and what was kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs

from tlplug.console import Console
from tlplug.plugins.host import PluginHost
from tlplug.recipe import Recipe
from tlplug.rundir import layout as rundir
from tlplug.search.driver import SEARCH_DIR, search_and_fit
from tlplug.search.rank import RANK_JSON, RANK_PLOT, Candidate, rank_backbones, rank_table
from tlplug.train.fit import prepare


def rank_and_search(
    plugins: PluginHost,
    recipe: Recipe,
    data: str | os.PathLike | None,
    backbones: list[Candidate],
    *,
    cache: Path | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    **search: Any,
) -> Any:
    """Rank ``backbones`` on ``data`` (features kept in ``cache``), then search the
    schedule and LR of the best as :func:`tlplug.search.driver.search_and_fit` does with
    ``search``'s settings, and train it into ``out``. ``recipe`` is as given, before its
    options are resolved (they depend on the backbone kept). With one backbone there is no
    rank: the search is exactly the one-backbone search."""
    if len(backbones) == 1:
        _, resolved = prepare(plugins, _with(recipe, backbones[0]))
        return search_and_fit(plugins, resolved, data, out=out, overwrite=overwrite, **search)
    if out is not None:
        rundir.check_run_dir(Path(out), overwrite)  # before the rank, not after it
    console = Console(quiet)
    folder = Path(tempfile.mkdtemp(prefix="tlplug-rank-"))
    try:
        ranked = attrs.evolve(recipe, schedule=None)  # the rank trains no schedule
        rows = rank_backbones(plugins, data, backbones, ranked, folder / "rank", console, cache)
        for line in ["ranking rung (LogME):", *("  " + row for row in rank_table(rows))]:
            console.say(line)
        kept = next(c for c in backbones if c.label == rows[0]["backbone"])
        console.say(f"kept: {kept.label}; searching its schedule and learning rate")
        _, resolved = prepare(plugins, _with(recipe, kept))
        out = Path(out) if out is not None else rundir.default_run_dir(kept.backbone)
        result = search_and_fit(plugins, resolved, data, out=out, overwrite=overwrite, **search)
        _record(out, folder / "rank", rows, kept)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _with(recipe: Recipe, candidate: Candidate) -> Recipe:
    return attrs.evolve(
        recipe, backbone=candidate.backbone, weights=candidate.weights or recipe.weights
    )


def _record(out: Path, ranked: Path, rows: list[dict[str, Any]], kept: Candidate) -> None:
    """Move the rank's files into the run's ``search/`` folder and note the rung in
    config.json."""
    keep = out / SEARCH_DIR
    for name in (RANK_JSON, RANK_PLOT):
        shutil.move(ranked / name, keep / name)
    config = rundir.read_json(out / rundir.CONFIG)
    config["search"]["ranking"] = {
        "rung": "rank",
        "scored_by": "logme",
        "kept": kept.label,
        "backbones": [
            {k: row[k] for k in ("backbone", "logme", "probe_val_acc", "features")} for row in rows
        ],
        "table": f"{SEARCH_DIR}/{RANK_JSON}",
    }
    rundir.write_json(out / rundir.CONFIG, config)
