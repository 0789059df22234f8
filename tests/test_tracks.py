"""Defects across layers: replayed synthetic builds (made here with the training tool's
generator, large planted defects at chosen places) through `bedsight run`, triggered and read by
a Modbus master the way a PLC does: verdict and reason code (register 17) per layer, the rule
that fired on stdout and in the journal, the recoat outcomes, and the tracks carried across a
restart."""
import json
import re
import sys
import time
import urllib.request
from dataclasses import replace

import numpy as np
from pymodbus.client import ModbusTcpClient

from chromium import Chromium
from conftest import MODEL_SIZE, REPO, run
from run_harness import MODBUS_TCP_FREE_PORT, Appliance, replay_over_modbus

sys.path.insert(0, str(REPO / "quantize"))
from bedsight_train.common import save_png_grey  # noqa: E402
from bedsight_train.synth import INCOMPLETENESS, STREAKING, SUPER_ELEVATION, Part, Placed, render_layer  # noqa: E402

VERDICTS = {1: "PASS", 2: "RECOAT", 3: "PAUSE", 4: "REVIEW", 5: "FAULT"}
# Reason codes: rule kind * 256 + class index (docs/tracks.md); the default model's classes.
SE, INC, STREAK = 1, 2, 4
CLASS_LIMIT, NOT_FIXABLE, TRACK_GROWTH, TRACK_LENGTH, TRACK_AFTER_RECOAT = 1, 4, 6, 5, 7

# Two part cross-sections, the same on every layer; the super-elevation sits on the left edge of
# the second one. Pixels of a 256 x 256 bed of 250 mm (render_at_model_size scales them).
PARTS = [Part("ellipse", 80, 170, 30, 22, 0.0), Part("ellipse", 180, 80, 25, 25, 0.0)]

CONFIG = """
[bed]
width_mm = 250.0
height_mm = 250.0

[rules.super-elevation]
max_largest_area_mm2 = {se_limit}
verdict = "{se_verdict}"

[rules.super-elevation.track]
max_growth_mm2_per_layer = 60.0
verdict = "PAUSE"

[rules.incompleteness]
max_total_area_mm2 = 500.0
verdict = "RECOAT"

[rules.incompleteness.track]
after_recoat = true
verdict = "PAUSE"

[rules.streaking]
max_total_area_mm2 = 3000.0
verdict = "RECOAT"

[rules.streaking.track]
max_layers = 4
verdict = "REVIEW"
message = "recoater blade damage suspected"

[rules.hopping]
verdict = "ignore"             # these builds have none; said on purpose, as a box must
{camera_and_plc}
[journal]
path = "{journal}"

[dashboard]
address = "127.0.0.1:0"
"""


def write_build(folder, inspections, seed):
    """One frame per inspection, in replay order: `layer-NNNN.png`, and for the re-spread of a
    layer after RECOAT `layer-NNNN.recoatK.png` (sorts right after it). `inspections` is a list
    of (layer, [Placed, ...])."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seen = {}
    for layer, placed in inspections:
        again = seen.get(layer, 0)
        seen[layer] = again + 1
        name = f"layer-{layer:04d}.png" if again == 0 else f"layer-{layer:04d}.recoat{again}.png"
        save_png_grey(folder / name, render_at_model_size(rng, placed))
    return folder


def render_at_model_size(rng, placed):
    """The scene, laid out in pixels of a 256 x 256 bed, rendered at the model's input size (the
    camera's resolution for the model the box runs) with every position and size scaled to it."""
    side = MODEL_SIZE[0]
    s = side / 256
    parts = [replace(p, cx=p.cx * s, cy=p.cy * s, rx=p.rx * s, ry=p.ry * s) for p in PARTS]
    placed = [replace(d, x=d.x * s, y=d.y * s, radius=d.radius * s) for d in placed]
    return render_layer(rng, side, (), parts=parts, placed=placed).image


class Plc:
    """`bedsight run` with the build in `folder`, and a Modbus master that triggers layers."""

    def __init__(self, tmp_path, folder, journal, se_limit=1500.0, se_verdict="PAUSE"):
        config = tmp_path / f"bedsight-{folder.name}.toml"
        config.write_text(CONFIG.format(camera_and_plc=replay_over_modbus(folder, MODBUS_TCP_FREE_PORT), journal=journal, se_limit=se_limit, se_verdict=se_verdict))
        self.appliance = Appliance(config, "--state-dir", tmp_path / "state")
        port = int(self.appliance.wait_for(r"modbus tcp: listening on 127\.0\.0\.1:(\d+)").group(1))
        self.dashboard = self.appliance.wait_for(r"^dashboard: (http://\S+/)$").group(1)
        self.appliance.wait_for(r"^ready$")
        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
        assert self.client.connect()

    def registers(self, address, count):
        reply = self.client.read_holding_registers(address, count=count)
        assert not reply.isError(), reply
        return reply.registers

    def inspect(self, layer, timeout=20.0):
        """Triggers `layer`, waits for its verdict: (verdict word, reason code)."""
        sequence = self.registers(6, 1)[0]
        assert not self.client.write_registers(100, [layer, 0, 1]).isError()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.registers(0, 18)
            if status[2] == 3 and status[6] == (sequence + 1) & 0xFFFF:
                assert status[0] == 2 and status[3] == layer
                self.appliance.wait_for(rf"^layer {layer} ")
                return VERDICTS[status[5]], status[17]
            time.sleep(0.02)
        raise AssertionError(f"layer {layer}: no verdict within {timeout} s")

    def wait_for_records(self, count, timeout=10.0):
        """Until the dashboard holds `count` records: the PLC is told first, the journal and the
        dashboard right after, so a page read the moment a verdict arrives may miss it."""
        deadline = time.monotonic() + timeout
        while len(json.loads(self.page("api/state"))["records"]) < count:
            assert time.monotonic() < deadline, f"the dashboard did not show {count} records within {timeout} s"
            time.sleep(0.05)

    def page(self, path):
        """A page of the dashboard, as a browser gets it."""
        with urllib.request.urlopen(self.dashboard + path, timeout=10) as response:
            assert response.status == 200
            return response.read().decode()

    def build(self, layers):
        return [(layer, *self.inspect(layer)) for layer in layers]

    def stop(self):
        self.client.close()
        assert self.appliance.stop() == 0, self.appliance.stderr
        return self.appliance.seen


def replay(tmp_path, name, build, layers, pages=(), visit=None):
    """Writes `build`, runs it, triggers `layers` in order, reads the dashboard's `pages` (and
    calls `visit` with the dashboard's address) and stops: (verdicts, stdout lines, journal
    path, {page: text})."""
    folder = write_build(tmp_path / name, build, seed=8)
    journal = tmp_path / "layers.bsj"
    plc = Plc(tmp_path, folder, journal)
    try:
        seen = plc.build(layers)
        plc.wait_for_records(len(layers))
        got = {page: plc.page(page) for page in pages}
        if visit:
            visit(plc.dashboard)
    finally:
        lines = plc.stop()
    return seen, lines, journal, got


def journal_records(journal):
    return [json.loads(line) for line in run("journal", "export", journal, "--format", "jsonl", check=True).stdout.splitlines()]


# A super-elevation on a part edge from layer 3, growing (radius 4, 7, 10, 13 px of a 256-px bed:
# the default model measures about 52, 181, 222 mm² on layers 3-5, each box holding the last).
GROWING = [(1, []), (2, [])] + [(3 + i, [Placed(SUPER_ELEVATION, 155, 80, r)]) for i, r in enumerate((4, 7, 10, 13))]


def test_a_growing_super_elevation_pauses_at_its_third_layer_and_not_before(tmp_path):
    seen, lines, journal, _ = replay(tmp_path, "growing", GROWING, [1, 2, 3, 4, 5])
    # Growth is judged from a track's third layer: 3 and 4 pass, 5 (slope ~85 mm²/layer) pauses.
    assert seen == [(1, "PASS", 0), (2, "PASS", 0), (3, "PASS", 0), (4, "PASS", 0), (5, "PAUSE", TRACK_GROWTH << 8 | SE)], seen
    rule = next(line for line in lines if line.startswith("rule: "))
    assert rule.startswith(f"rule: rules.super-elevation.track.max_growth_mm2_per_layer (code {TRACK_GROWTH << 8 | SE}): super-elevation track #1 over layers 3-5: grows "), rule
    records = journal_records(journal)
    assert [(r["layer"], r["verdict"], r["rule"], r["reason_code"]) for r in records][-1] == (5, "PAUSE", "rules.super-elevation.track.max_growth_mm2_per_layer", 0x0601)
    # The journal keeps each defect's footprint in bed millimetres (0.9766 mm per pixel here),
    # around the planted centre at pixel (155, 80) = (151.4, 78.1) mm.
    x, y, w, h = records[4]["defects"][0]["bbox_mm"]
    assert abs(x + w / 2 - 151.4) < 8 and abs(y + h / 2 - 78.1) < 8, (x, y, w, h)
    assert any(re.match(r"tracks: \d+ started, 1 active; map cells with defects: super-elevation \d+", line) for line in lines), "\n".join(lines)


def test_an_incompleteness_fixed_by_one_recoat_passes_and_one_that_comes_back_pauses(tmp_path):
    hole = lambda: [Placed(INCOMPLETENESS, 190, 190, 25)]  # noqa: E731
    build = [(1, []), (2, hole()), (2, []), (3, []), (4, hole()), (4, hole())]
    seen, lines, journal, pages = replay(tmp_path, "holes", build, [1, 2, 2, 3, 4, 4], pages=["tracks.html"])
    assert seen == [
        (1, "PASS", 0),
        (2, "RECOAT", CLASS_LIMIT << 8 | INC),
        (2, "PASS", 0),  # the re-spread layer is clean: the recoat fixed it
        (3, "PASS", 0),
        (4, "RECOAT", CLASS_LIMIT << 8 | INC),
        (4, "PAUSE", TRACK_AFTER_RECOAT << 8 | INC),  # still there after the recoat: a starved feed
    ], seen
    assert "recoat: layer 2 fixed (1 of 1 re-spread layers fixed)" in lines
    assert "recoat: layer 4 not fixed (1 of 2 re-spread layers fixed)" in lines
    assert any(line.startswith("rule: rules.incompleteness.track.after_recoat (code 1794): incompleteness track #2 over layers 4-4: still there after the RECOAT of layer 4 → PAUSE") for line in lines), lines
    assert any(line.endswith("recoats: 2 issued, 1 fixed, 1 not fixed") for line in lines), lines
    outcomes = [(r["layer"], r["verdict"], r["recoat_outcome"]) for r in journal_records(journal)]
    assert outcomes == [(1, "PASS", ""), (2, "RECOAT", ""), (2, "PASS", "fixed"), (3, "PASS", ""), (4, "RECOAT", ""), (4, "PAUSE", "not fixed")], outcomes
    # The dashboard counts the recoats and lists both holes: the first ended by its recoat,
    # the second still there after it.
    tracks = pages["tracks.html"]
    assert '<span id="recoats-issued">2</span> issued, <span id="recoats-fixed">1</span> fixed, <span id="recoats-not-fixed">1</span> not fixed' in tracks, tracks
    assert re.search(r"<td>#2</td><td>incompleteness</td><td>4-4</td><td>1</td><td>[\d.]+</td><td>-</td><td>1</td>.*<td>active</td>", tracks), tracks
    assert re.search(r"<td>#1</td><td>incompleteness</td><td>2-2</td><td>1</td><td>[\d.]+</td><td>-</td><td>0</td>.*<td>ended</td>", tracks), tracks


def test_a_persistent_streak_asks_for_review_of_the_blade(tmp_path):
    # A groove along the recoater's travel at the same height on every layer, starting near the
    # left end on odd layers and three quarters along on even ones: as boxes the two overlap by
    # under 0.3 (66 of 246 px), along the blade they are the same place (docs/tracks.md).
    build = [(layer, [Placed(STREAKING, 10 if layer % 2 else 190, 120)]) for layer in range(1, 7)]
    in_browser = {}

    def look(dashboard):
        # The operator's page in a real browser: the map shows the streak on all six layers;
        # narrowing the layer range to 5-6 leaves two; the tracks list has the streak. (A layer
        # may draw its streak in pieces: the map shows the defects as the mask found them.)
        browser = Chromium(dashboard)
        try:
            count = "document.querySelectorAll('#defect-map g.map-layer:not([style*=none]):has(rect.footprint[data-class=streaking])').length"
            in_browser["all"] = browser.wait_for(f"{count} === 6 && {count}", timeout=60, what="a streak footprint on each of six layers of the defect map")
            browser.evaluate("(() => { const f = document.getElementById('map-from'); f.value = 5; f.dispatchEvent(new Event('input')) })()")
            in_browser["5-6"] = browser.evaluate(count)
            in_browser["shown"] = browser.evaluate("document.getElementById('map-shown').textContent")
            in_browser["tracks"] = browser.wait_for("document.querySelector('#tracks table.tracks tr.track') && document.querySelector('#tracks table.tracks tr.track').textContent")
            browser.evaluate("document.getElementById('defect-map').scrollIntoView()")
            browser.screenshot("defect-map-streak.png")
        finally:
            browser.close()

    seen, lines, journal, pages = replay(tmp_path, "streak", build, range(1, 7), pages=["map.svg", "tracks.html", "map-filter.js"], visit=look)
    code = TRACK_LENGTH << 8 | STREAK
    assert seen == [(1, "PASS", 0), (2, "PASS", 0), (3, "PASS", 0), (4, "PASS", 0), (5, "REVIEW", code), (6, "REVIEW", code)], seen
    assert "track: streaking track #1 over layers 1-5: 5 layers > 4 → REVIEW: recoater blade damage suspected" in lines, lines
    last = journal_records(journal)[-1]
    assert (last["rule"], last["reason"]) == ("rules.streaking.track.max_layers", "streaking track #1 over layers 1-6: 6 layers > 4 → REVIEW: recoater blade damage suspected")

    # The dashboard: the stacked map has the streak on each of the six layers, at its height on
    # the bed (pixel row 120 of 256 on 250 mm: ~117 mm, drawn at 480/250 units per mm), and the
    # tracks list has the one streak over layers 1-6.
    streaks = re.findall(r'<g class="map-layer" data-layer="(\d)"><rect class="footprint" data-class="streaking" x="[\d.]+" y="([\d.]+)"', pages["map.svg"])
    assert [int(layer) for layer, _ in streaks] == [1, 2, 3, 4, 5, 6], pages["map.svg"]
    assert all(abs(float(y) / (480 / 250) - 117) < 6 for _, y in streaks), streaks
    assert 'id="map-from" value="1"' in pages["map.svg"] and 'id="map-to" value="6"' in pages["map.svg"]
    assert "function filterDefectMap()" in pages["map-filter.js"]
    assert re.search(r"<td>#1</td><td>streaking</td><td>1-6</td><td>6</td>", pages["tracks.html"]), pages["tracks.html"]
    assert (in_browser["all"], in_browser["5-6"], in_browser["shown"]) == (6, 2, "2 inspections with defects shown"), in_browser
    assert in_browser["tracks"].startswith("#1streaking1-66"), in_browser
    # The build report written at the stop has the same map, its filter and the tracks.
    report = next(line.split(": ", 1)[1] for line in lines if line.startswith("report: "))
    html = open(report, encoding="utf-8").read()
    assert "<h2>Defect map</h2>" in html and "filterDefectMap();</script>" in html
    assert [int(layer) for layer in re.findall(r'<g class="map-layer" data-layer="(\d)"><rect class="footprint" data-class="streaking"', html)] == [1, 2, 3, 4, 5, 6]
    assert re.search(r"<td>#1</td><td>streaking</td><td>1-6</td><td>6</td>", html)


def test_a_clean_build_with_scattered_one_layer_noise_passes_throughout(tmp_path):
    noise = [
        [],
        [Placed(SUPER_ELEVATION, 80, 148, 5)],
        [Placed(INCOMPLETENESS, 40, 60, 8)],
        [Placed(STREAKING, 120, 30)],
        [],
        [Placed(SUPER_ELEVATION, 205, 80, 5)],
        [Placed(INCOMPLETENESS, 200, 220, 8)],
        [Placed(STREAKING, 60, 200)],
    ]
    seen, lines, journal, _ = replay(tmp_path, "noise", list(enumerate(noise, start=1)), range(1, 9))
    assert seen == [(layer, "PASS", 0) for layer in range(1, 9)], seen
    records = journal_records(journal)
    # The noise was seen (it is on the map), it just never made a track longer than one layer.
    assert sum(len(r["defects"]) for r in records) >= 5, records
    assert not any(line.startswith(("track: ", "rule: ")) for line in lines), lines


def test_after_a_kill_mid_build_the_tracks_go_on_from_the_journal(tmp_path):
    journal = tmp_path / "layers.bsj"
    first = write_build(tmp_path / "first", GROWING[:4], seed=8)
    plc = Plc(tmp_path, first, journal)
    try:
        assert plc.build([1, 2, 3, 4]) == [(layer, "PASS", 0) for layer in (1, 2, 3, 4)]
        # The fourth record is on the disk once `journal check` counts it.
        deadline = time.monotonic() + 10
        while "4 records" not in run("journal", "check", journal).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        plc.client.close()
        plc.appliance.kill()  # SIGKILL: no orderly stop

    # The printer goes on from layer 5; the camera replays the rest of the build.
    rest = write_build(tmp_path / "rest", GROWING, seed=8)
    for frame in sorted(rest.iterdir())[:4]:
        frame.unlink()
    plc = Plc(tmp_path, rest, journal)
    try:
        restored = next(line for line in plc.appliance.seen if line.startswith("history: "))
        assert re.match(r"history: restored from 4 journal records: tracks: \d+ started, [1-9]\d* active; map cells with defects: super-elevation [1-9]", restored), restored
        seen = plc.build([5])
    finally:
        plc.stop()
    # Only a track that began on layer 3, before the restart, can grow over three layers by 5.
    assert seen == [(5, "PAUSE", TRACK_GROWTH << 8 | SE)], seen
    assert journal_records(journal)[-1]["reason"].startswith("super-elevation track #1 over layers 3-5: grows ")


def test_a_recoat_is_only_sent_for_what_a_recoat_can_fix(tmp_path):
    # A rule that asks RECOAT for super-elevation (not in recoat.fixable): PAUSE, with the reason.
    folder = write_build(tmp_path / "proud", [(1, [Placed(SUPER_ELEVATION, 155, 80, 10)])], seed=8)
    plc = Plc(tmp_path, folder, tmp_path / "layers.bsj", se_limit=100.0, se_verdict="RECOAT")
    try:
        seen = plc.build([1])
    finally:
        lines = plc.stop()
    assert seen == [(1, "PAUSE", NOT_FIXABLE << 8 | SE)], seen
    assert any(line.startswith("rule: rules.super-elevation.recoat.fixable (code 1025): super-elevation: largest defect ") and line.endswith("→ RECOAT, but a recoat cannot fix super-elevation (recoat.fixable) → PAUSE") for line in lines), lines
