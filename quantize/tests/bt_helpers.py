"""Helpers shared by the tests (kept out of conftest.py so that tests can import them by a name
no other test suite in the repository uses)."""

from __future__ import annotations

from pathlib import Path

TINY_WIDTHS = {
    "isdnet-sr": {"shallow": [8, 16, 32], "deep": [8, 16, 16, 16], "fuse": 16, "groups": 4, "sr": [8, 8, 8], "aspp_rates": [1, 2, 3]},
    "am-segnet": {"widths": [8, 16, 16, 32]},
}
SIZE = 64


def train_tiny(arch: str, data: Path, out: Path, epochs: int = 3, **kw):
    from bedsight_train.train import TrainOptions, train

    return train(TrainOptions(arch=arch, data=data, epochs=epochs, out=out, batch_size=4, widths=TINY_WIDTHS[arch], progress=False, **kw))


def bedsight_bin() -> Path | None:
    from bedsight_train.pack import find_bedsight_bin

    return find_bedsight_bin()
