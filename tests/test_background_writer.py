"""Checkpoint snapshots: frozen tensors are copied once per stage, everything else each time."""

from __future__ import annotations

import time

import torch
from torch import nn

from tlplug.rundir.writer import BackgroundWriter


def test_snapshots_share_one_copy_of_what_holds_still_and_copy_the_rest():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    writer = BackgroundWriter()
    writer.hold_still(p for p in model.parameters() if not p.requires_grad)

    first = writer.snapshot(model.state_dict())
    with torch.no_grad():
        model[1].weight.add_(1.0)
    second = writer.snapshot(model.state_dict())

    assert second["0.weight"] is first["0.weight"]  # frozen: one shared copy
    assert second["1.weight"] is not first["1.weight"]
    assert torch.equal(second["1.weight"], first["1.weight"] + 1.0)
    assert first["0.weight"].data_ptr() != model[0].weight.data_ptr()  # a copy, not the tensor


def test_a_new_stage_copies_again_what_it_no_longer_holds_still():
    layer = nn.Linear(3, 3)
    writer = BackgroundWriter()
    writer.hold_still(layer.parameters())
    before = writer.snapshot(layer.state_dict())
    writer.hold_still([])  # the next stage trains the layer
    with torch.no_grad():
        layer.weight.mul_(2.0)
    after = writer.snapshot(layer.state_dict())
    assert torch.equal(after["weight"], 2.0 * before["weight"])
    assert torch.equal(after["weight"], layer.weight)


def test_a_view_of_a_still_tensor_is_copied_as_itself():
    frozen = torch.arange(12.0).view(3, 4)
    writer = BackgroundWriter()
    writer.hold_still([frozen])
    copies = writer.snapshot({"whole": frozen, "row": frozen[0], "column": frozen[:, 1]})
    assert torch.equal(copies["row"], frozen[0]) and copies["row"].shape == (4,)
    assert torch.equal(copies["column"], frozen[:, 1]) and copies["column"].is_contiguous()


def test_writes_queued_together_start_only_when_all_are_queued(tmp_path):
    writer = BackgroundWriter()
    order, queued = [], []
    with writer.together():
        writer.submit(lambda: order.append(("weights", bool(queued))), tmp_path / "model")
        time.sleep(0.2)  # the writer thread would have started by now if it could
        writer.submit(lambda: order.append(("state", bool(queued))), tmp_path / "resume")
        queued.append(True)
    writer.wait()
    assert order == [("weights", True), ("state", True)]
