"""A camera that hangs and hands out its last frame again, as `bedsight run` under the shipped
configuration meets it: FAULT with the frozen check's reason code for the PLC, the check named
in the journal, on the dashboard page (real headless Chromium), in /metrics and in the build
report, and /healthz reporting the camera down until a new layer's frame comes."""
import json
import shutil

from chromium import Chromium
from conftest import SAMPLE_BUILD, report_row, run
from test_dashboard import TOKEN, get, layer, metrics, start, wait_for_records

FROZEN_FAULT = 0x0804  # docs/tracks.md: kind 8 (FAULT) x 256 + check 4 (frozen)


def test_a_repeated_frame_is_a_frozen_camera_everywhere_an_operator_looks(tmp_path, line_port):
    frames = tmp_path / "frames"
    frames.mkdir()
    # the camera's buffers: layer 1, layer 1 again (the same bytes), then layer 3 of the build
    shutil.copy(SAMPLE_BUILD / "layer-0001.png", frames / "layer-0001.png")
    shutil.copy(SAMPLE_BUILD / "layer-0001.png", frames / "layer-0002.png")
    shutil.copy(SAMPLE_BUILD / "layer-0003.png", frames / "layer-0003.png")
    appliance, url = start(tmp_path, line_port, folder=frames)
    browser = None
    try:
        first = layer(line_port, 1)
        assert first != "FAULT"
        assert layer(line_port, 2) == "FAULT"
        wait_for_records(url, 2)
        record = json.loads(get(url + "/api/records/1")[1])["record"]
        assert (record["verdict"], record["rule"], record["reason_code"]) == ("FAULT", "frame_check.frozen", FROZEN_FAULT)
        assert record["reason"].startswith("frozen camera: the frame is the last judged layer's bed again (1 in a row; grain correlation 1.00 >= 0.40)")
        status, text = get(url + "/healthz")
        assert status == 503 and "camera: frozen camera" in text, text
        values = metrics(url)
        assert values[("bedsight_frame_checks_total", (("check", "frozen"),))] == 1
        assert values[("bedsight_frame_checks_total", (("check", "occluded"),))] == 0

        browser = Chromium(url + "/")
        browser.wait_for("(() => { const v = document.getElementById('verdict'); return v !== null && v.textContent === 'FAULT' })()", what="layer 2's FAULT")
        facts = browser.evaluate("document.getElementById('layer-facts').textContent")
        assert "why: frozen camera: the frame is the last judged layer's bed again" in facts and "[frame_check.frozen]" in facts, facts
        assert browser.evaluate("document.getElementById('status-camera').className") == "badge down"
        # a FAULT is no REVIEW to acknowledge; it can be marked a false alarm
        assert browser.evaluate("[document.getElementById('ack').hidden, document.getElementById('false-alarm').hidden]") == [True, False]

        # the operator notes what it was (the token guards it)
        status, _ = get(
            url + "/api/records/1/false-alarm",
            "POST",
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            json.dumps({"note": "camera cable re-seated"}).encode(),
        )
        assert status == 200

        # a new layer's frame: judged again, and the camera is up
        assert layer(line_port, 3) != "FAULT"
        wait_for_records(url, 3)
        status, text = get(url + "/healthz")
        assert status == 200, text
        assert appliance.stop() == 0
    finally:
        if browser:
            browser.close()
        appliance.kill()

    report = tmp_path / "report.html"
    run("report", "--journal", tmp_path / "journal" / "layers.bsj", "--out", report, check=True)
    page = report.read_text()
    assert '<td id="frame-checks">frozen 1</td>' in page
    # the worst layers and the layer table name the check and its reason, and the note is there
    assert "frame_check.frozen: frozen camera: the frame is the last judged layer&#39;s bed again" in page
    assert '<td class="why">frame_check.frozen: frozen camera: the frame is the last judged layer&#39;s bed again' in page
    assert "<td>false alarm: camera cable re-seated</td>" in page
    # the judged layer's row: the shipped model has no layer head, so no layer class is shown
    # (tests/test_dashboard.py shows one from an image that has a head)
    first = json.loads(run("journal", "export", tmp_path / "journal" / "layers.bsj", "--format", "jsonl", check=True).stdout.splitlines()[0])
    assert not first["layer_class"], first
    row = report_row(page, 0)
    assert "layer class" not in row and first["verdict"] in row, row
