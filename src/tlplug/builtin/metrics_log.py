"""metrics.jsonl: one JSON object per epoch, appended as a lifecycle plugin.

It runs after other plugins (``trylast``), so the keys they add to a record are written
too. A line reaches the disk with the epoch's resume state, which flushes the file before
it is published: the resume state never names an epoch whose line could be lost.
"""

from __future__ import annotations

from tlplug import hookimpl
from tlplug.rundir import layout as rundir


@hookimpl(trylast=True)
def tlplug_epoch_end(run, record) -> None:
    rundir.append_jsonl(run.run_dir / rundir.METRICS, record)
