"""`bedsight run` with the video as the trigger (a bolt-on retrofit, no line from the printer):
a replayed video-like frame sequence (a settled bed, the recoater blade crossing it, the new
settled bed) must give exactly one layer per recoat, analysed on the settled new bed."""
import re
import shutil

import numpy as np
from PIL import Image

from run_harness import Appliance, replay_camera, write_config
from conftest import SAMPLE_BUILD


def blade_over(bed: np.ndarray, x: int) -> np.ndarray:
    frame = bed.copy()
    frame[:, x : x + 60] = 10
    return frame


def video_replay(tmp_path, folder, frames):
    """Writes `frames` ((kind, image) in order) into `folder` as the video a camera would show,
    and a configuration replaying it with the video trigger (preview every 50 ms)."""
    for index, (kind, frame) in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame-{index:03d}-{kind}.png")
    return write_config(tmp_path, replay_camera(folder) + """
[trigger]
kind = "video"
interval_ms = 50
pass_threshold = 10.0
settle_threshold = 2.0
hold_ms = 200
""")


def test_two_recoats_in_the_video_give_two_layers(tmp_path, ledger):
    names = sorted(ledger)
    beds = [np.array(Image.open(SAMPLE_BUILD / name).convert("L")) for name in names[:3]]
    folder = tmp_path / "video"
    folder.mkdir()
    frames = []
    # Settled bed A, the blade crossing, settled bed B (long enough to settle and be captured),
    # the blade again, settled bed C.
    frames += [("a", beds[0])] * 3
    frames += [("blade", blade_over(beds[0], x)) for x in (0, 90, 180)]
    frames += [("b", beds[1])] * 12
    frames += [("blade", blade_over(beds[1], x)) for x in (0, 90, 180)]
    frames += [("c", beds[2])] * 12
    appliance = Appliance(video_replay(tmp_path, folder, frames))
    try:
        appliance.wait_for(r"^ready$")
        first = appliance.wait_for(r"^layer 1 (\w+) .*\[video\].*frame-\d+-(\w+)\.png")
        second = appliance.wait_for(r"^layer 2 (\w+) .*\[video\].*frame-\d+-(\w+)\.png")
        # Each layer is analysed on the new, settled bed, never on a blade frame.
        assert first.group(2) == "b" and second.group(2) == "c", appliance.seen
        for match, name in [(first, names[1]), (second, names[2])]:
            planted = ledger[name] - {"lattice"}
            assert (match.group(1) == "PASS") == (not planted), match.group(0)
        assert appliance.stop() == 0
        layers = [line for line in appliance.seen if re.match(r"^layer \d+ ", line)]
        assert len(layers) == 2, layers
    finally:
        appliance.kill()


def test_with_a_video_trigger_a_covered_bed_is_captured_again_until_clear(tmp_path, ledger):
    names = sorted(ledger)
    beds = [np.array(Image.open(SAMPLE_BUILD / name).convert("L")) for name in names[:2]]
    folder = tmp_path / "video"
    folder.mkdir()
    covered = beds[1].copy()
    covered[:, 120:140] = 10  # an arm across the new bed, still when the bed settles
    frames = [("a", beds[0])] * 3
    frames += [("blade", blade_over(beds[0], x)) for x in (0, 90, 180)]
    frames += [("covered", covered)] * 8
    frames += [("b", beds[1])] * 12
    appliance = Appliance(video_replay(tmp_path, folder, frames))
    try:
        appliance.wait_for(r"^ready$")
        first = appliance.wait_for(r"^layer 1 (\w+) .*\[video\].*frame-\d+-(\w+)\.png")
        # the layer is judged on the clear bed, not REVIEW for the arm that was still in view
        assert first.group(2) == "b", appliance.seen
        planted = ledger[names[1]] - {"lattice"}
        assert (first.group(1) == "PASS") == (not planted), first.group(0)
        assert appliance.stop() == 0
        layers = [line for line in appliance.seen if re.match(r"^layer \d+ ", line)]
        assert len(layers) == 1, layers
    finally:
        appliance.kill()
