"""The operator's view of `bedsight run` on a replayed build, the way a person and a monitoring
system use it: the dashboard in real headless Chromium with live updates, token-protected
controls, /metrics, /healthz, the image folder's size limit and `bedsight report`."""
import html.parser
import json
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from chromium import Chromium
from conftest import MODEL_SIZE, SAMPLE_BUILD, report_row, run
from run_harness import Appliance, LinePort, serial_line_config

TOKEN = "test-token-0123"
# A model image with a layer-level head (the default image before the real-bed model).
LAYER_HEAD = Path(__file__).resolve().parent / "data" / "layer-head-256.bsimg"
VERDICT_LINE = re.compile(r"^VERDICT (\d+) (PASS|RECOAT|PAUSE|REVIEW|FAULT) ")


def start(tmp_path: Path, line_port: LinePort, folder: Path = SAMPLE_BUILD, record: str = "", model: Path | None = None) -> tuple[Appliance, str]:
    """`bedsight run` on a replay of `folder`, LAYER lines on the pty, the dashboard on a free
    port (with the model image `model` instead of the embedded one); returns the appliance and the
    dashboard's base URL."""
    config = serial_line_config(tmp_path, line_port.path, folder, dashboard=f'\n[dashboard]\naddress = "127.0.0.1:0"\ntoken = "{TOKEN}"\n')
    text = config.read_text()
    if model is not None:
        assert '[model]\nbackend = "auto"\n' in text
        text = text.replace('[model]\nbackend = "auto"\n', f'[model]\nbackend = "auto"\nimage = "{model}"\n')
    config.write_text(
        text
        + f'\n[journal]\npath = "{tmp_path / "journal" / "layers.bsj"}"\n'
        + f'\n[record]\nfolder = "{tmp_path / "images"}"\n{record}'
    )
    appliance = Appliance(config)
    url = appliance.wait_for(r"^dashboard: (http://127\.0\.0\.1:\d+)/$").group(1)
    appliance.wait_for(r"^ready$")
    return appliance, url


def layer(line_port: LinePort, number: int) -> str:
    """Triggers a layer; its verdict word."""
    line_port.send(f"LAYER {number}\r\n".encode())
    match = VERDICT_LINE.match(line_port.read_line())
    assert match and int(match.group(1)) == number, match
    return match.group(2)


def get(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def wait_until(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def wait_for_records(url: str, count: int):
    """Until the dashboard has `count` records (the PLC hears the verdict first, then the
    journal and the dashboard)."""
    deadline = time.monotonic() + 10
    while len(json.loads(get(url + "/api/state")[1])["records"]) < count:
        assert time.monotonic() < deadline, f"the dashboard did not show {count} records within 10 s"
        time.sleep(0.05)


def wait_for_images(url: str, count: int):
    """Until the recorder has written `count` layers' images."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = json.loads(get(url + "/api/state")[1])["records"]
        if len(records) >= count and all(r["images"] for r in records[:count]):
            return records
        time.sleep(0.1)
    raise AssertionError(f"the images of {count} layers were not written within 30 s")


def metrics(url: str) -> dict:
    """Every sample of /metrics: (name, sorted label items) -> value."""
    status, text = get(url + "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def slide_to(browser: Chromium, index: int):
    """Moves the layer slider as a hand would (an input event)."""
    browser.evaluate(f"(() => {{ const s = document.getElementById('slider'); s.value = {index}; s.dispatchEvent(new Event('input')) }})()")


def test_the_page_in_chromium_follows_the_build_live(tmp_path, line_port):
    appliance, url = start(tmp_path, line_port)
    browser = None
    try:
        verdicts = [layer(line_port, 1), layer(line_port, 2)]
        wait_for_images(url, 2)
        browser = Chromium(url + "/")
        browser.wait_for("document.querySelectorAll('#chart circle.pt-unc').length === 2", what="a chart of 2 points")
        browser.wait_for(f"document.getElementById('verdict').textContent === {verdicts[1]!r}", what="layer 2's verdict")
        browser.wait_for("document.getElementById('status-live').textContent === 'live updates: on'", what="the event stream connected")
        # A mark that a reload would wipe: the next layer must arrive without one.
        browser.evaluate("window.stillTheSamePage = true")

        verdicts.append(layer(line_port, 3))
        browser.wait_for(f"document.getElementById('layer-label').textContent.startsWith('Layer 3 ')", what="layer 3")
        assert browser.evaluate("document.getElementById('verdict').textContent") == verdicts[2]
        assert browser.evaluate("window.stillTheSamePage") is True
        # the shipped model has no layer head: the record holds no layer class and the page shows none
        record = json.loads(get(url + "/api/records/2")[1])["record"]
        facts = browser.wait_for("document.getElementById('layer-facts').textContent", what="layer 3's facts")
        assert not record["layer_class"] and "layer class" not in facts, (record["layer_class"], facts)
        browser.wait_for("document.querySelectorAll('#chart circle.pt-unc').length === 3", what="a chart of 3 points")
        image = browser.wait_for(
            "(() => { const i = document.getElementById('bed'); return i.complete && i.naturalWidth > 0 && !i.hidden"
            " && i.src.endsWith('/images/2/overlay.png') ? [i.naturalWidth, i.naturalHeight] : null })()",
            what="layer 3's overlay loaded",
        )
        assert image == list(MODEL_SIZE)
        assert browser.evaluate("getComputedStyle(document.getElementById('missing')).display") == "none"
        assert browser.evaluate("document.getElementById('status-camera').className") == "badge up"
        assert "ort" in browser.evaluate("document.getElementById('status-backend').textContent") or "tract" in browser.evaluate(
            "document.getElementById('status-backend').textContent"
        )

        # the overlay's legend: one swatch per class the overlay draws
        legend = browser.wait_for("document.getElementById('legend').textContent", what="the legend")
        for name in ("super-elevation", "incompleteness", "hopping", "streaking", "lattice"):
            assert name in legend, legend
        assert browser.evaluate("document.querySelectorAll('#legend .swatch').length") == 5
        # the camera frame as it came, then back to the overlay
        browser.evaluate("document.getElementById('raw-toggle').click()")
        browser.wait_for("document.getElementById('bed').src.endsWith('/images/2/raw.png')", what="the raw frame")
        browser.evaluate("document.getElementById('raw-toggle').click()")
        browser.wait_for("document.getElementById('bed').src.endsWith('/images/2/overlay.png')", what="the overlay again")
        browser.evaluate("document.getElementById('heat-toggle').click()")
        browser.wait_for(
            "(() => { const i = document.getElementById('heat'); return !i.hidden && i.complete && i.naturalWidth > 0 })()", what="the uncertainty heat map"
        )
        shot = browser.screenshot("dashboard-live.png")
        assert shot.stat().st_size > 10_000

        # The slider looks back at layer 1; the page stops following the live layer.
        slide_to(browser, 0)
        browser.wait_for("document.getElementById('layer-label').textContent.startsWith('Layer 1 ')", what="layer 1 from the slider")
        assert browser.evaluate("document.getElementById('verdict').textContent") == verdicts[0]
        assert browser.evaluate("document.getElementById('follow').checked") is False

        # A control with the right token, typed in as an operator would: recorded and shown.
        flagged = next((i for i, v in enumerate(verdicts) if v != "PASS"), None)
        assert flagged is not None, verdicts
        slide_to(browser, flagged)
        browser.wait_for(f"document.getElementById('layer-label').textContent.startsWith('Layer {flagged + 1} ')")
        browser.evaluate("document.getElementById('token').value = 'wrong-token-999'; document.getElementById('false-alarm').click()")
        assert "403" in browser.wait_for("document.getElementById('control-msg').textContent", what="the refusal")
        browser.evaluate(f"document.getElementById('token').value = {TOKEN!r}; document.getElementById('false-alarm').click()")
        browser.wait_for("document.querySelectorAll('#annotations li.annotation').length === 1", what="the false alarm listed")
        assert "false alarm" in browser.evaluate("document.getElementById('annotations').textContent")
        saved = [json.loads(line) for line in (tmp_path / "journal" / "annotations.jsonl").read_text().splitlines()]
        assert [(a["index"], a["action"]) for a in saved] == [(flagged, "false-alarm")]
        assert appliance.stop() == 0
    finally:
        if browser:
            browser.close()
        appliance.kill()


def test_a_layer_head_s_class_is_on_the_page_and_in_the_report(tmp_path, line_port):
    """A model image with a layer-level head (format 1.1; tests/data/layer-head-256.bsimg): what the
    head called a layer, as the journal record holds it, on the page and in the report's row."""
    appliance, url = start(tmp_path, line_port, model=LAYER_HEAD)
    try:
        layer(line_port, 1)
        wait_for_images(url, 1)
        record = json.loads(get(url + "/api/records/0")[1])["record"]
        assert record["layer_class"] in ("clean", "incompleteness", "streaking", "super-elevation"), record
        called = f"layer class {record['layer_class']} ({int(record['layer_class_confidence'] * 100 + 0.5)}%)"  # Math.round
        browser = Chromium(url + "/")
        try:
            browser.wait_for(f"(document.getElementById('layer-facts')?.textContent || '').includes({called!r})", what=called)
        finally:
            browser.close()
        assert appliance.stop() == 0
    finally:
        appliance.kill()
    out = tmp_path / "report.html"
    run("report", "--journal", tmp_path / "journal" / "layers.bsj", "--out", out, check=True)
    row = report_row(out.read_text(), 0)
    assert f"layer class {record['layer_class']} ({record['layer_class_confidence'] * 100:.0f}%)" in row, row


def test_controls_need_the_token_and_bad_requests_change_nothing(tmp_path, line_port):
    appliance, url = start(tmp_path, line_port)
    try:
        verdicts = [layer(line_port, n) for n in (1, 2, 3)]
        wait_for_records(url, 3)
        flagged = next(i for i, v in enumerate(verdicts) if v != "PASS")
        passed = verdicts.index("PASS")
        control = f"{url}/api/records/{flagged}/false-alarm"
        annotations = tmp_path / "journal" / "annotations.jsonl"

        status, text = get(control, "POST")
        assert status == 401 and "Authorization: Bearer" in text
        assert get(control, "POST", {"Authorization": "Bearer wrong-token-99"})[0] == 403
        assert get(control, "POST", {"Authorization": TOKEN})[0] == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert get(f"{url}/api/records/x/false-alarm", "POST", bearer)[0] == 400
        status, text = get(f"{url}/api/records/99/false-alarm", "POST", bearer)
        assert status == 404 and "3 records" in text
        assert get(f"{url}/api/records/{flagged}/delete", "POST", bearer)[0] == 404
        status, text = get(f"{url}/api/records/{passed}/false-alarm", "POST", bearer)
        assert status == 409 and "PASS" in text
        if verdicts[flagged] != "REVIEW":
            assert get(f"{url}/api/records/{flagged}/acknowledge", "POST", bearer)[0] == 409
        assert get(control, "POST", bearer, b"not json")[0] == 400
        assert not annotations.exists(), "a refused control must record nothing"
        assert json.loads(get(f"{url}/api/records/{flagged}")[1])["annotations"] == []

        status, text = get(control, "POST", bearer, b'{"note": "spatter, not a defect"}')
        assert status == 200, text
        assert get(control, "POST", bearer)[0] == 409
        shown = json.loads(get(f"{url}/api/records/{flagged}")[1])["annotations"]
        assert [(a["action"], a["note"]) for a in shown] == [("false-alarm", "spatter, not a defect")]
        assert len(annotations.read_text().splitlines()) == 1

        # Read-only pages need no token; bad paths and methods are clear 4xx.
        assert get(url + "/")[0] == 200
        assert get(url + "/api/records/abc")[0] == 400
        assert get(url + "/api/records/3")[0] == 404
        assert get(url + "/images/0/secret.png")[0] == 404
        assert get(url + "/images/0/../../etc/passwd")[0] == 404
        assert get(url + "/nope")[0] == 404
        assert get(url + "/metrics", "POST")[0] == 405
        assert appliance.stop() == 0
    finally:
        appliance.kill()
    # Restarted on the same journal: the history and the annotation come back.
    appliance, url = start(tmp_path, line_port)
    try:
        state = json.loads(get(url + "/api/state")[1])
        assert [r["verdict"] for r in state["records"]] == verdicts
        assert [(a["index"], a["action"]) for a in state["annotations"]] == [(flagged, "false-alarm")]
        assert appliance.stop() == 0
    finally:
        appliance.kill()


def test_clients_that_stall_hold_nothing_but_themselves(tmp_path, line_port):
    """Controls whose body never comes (a phone that lost its Wi-Fi mid-request) must not freeze
    the page or /healthz, which a monitoring system polls, and when they give up nothing is
    recorded."""
    appliance, url = start(tmp_path, line_port)
    stalled = []
    try:
        verdicts = [layer(line_port, n) for n in (1, 2, 3)]
        wait_for_records(url, 3)
        flagged = next(i for i, v in enumerate(verdicts) if v != "PASS")
        host, port = url.removeprefix("http://").split(":")
        # the head of a false-alarm with the right token, and 2 of the 2000 body bytes it announces
        # (over 1024 bytes, so the body is read by the request's handler, not ahead of it)
        head = (
            f"POST /api/records/{flagged}/false-alarm HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2000\r\n\r\n{\""
        ).encode()
        # Each stalled control, then at once the page's state and /healthz: every one answered
        # (a server frozen by a stalled body leaves them unanswered: urlopen gives up after 10 s).
        for _ in range(20):
            client = socket.create_connection((host, int(port)))
            client.sendall(head)
            stalled.append(client)
            assert get(url + "/healthz") == (200, "ok: camera, model and PLC link are up\n")
            assert len(json.loads(get(url + "/api/state")[1])["records"]) == 3

        for client in stalled:
            client.close()
        stalled.clear()
        assert get(url + "/healthz")[0] == 200
        assert not (tmp_path / "journal" / "annotations.jsonl").exists(), "a control that never arrived must record nothing"
        # the control itself still works, whole
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert get(f"{url}/api/records/{flagged}/false-alarm", "POST", bearer, b'{"note": "spatter"}')[0] == 200
        assert appliance.stop() == 0
    finally:
        for client in stalled:
            client.close()
        appliance.kill()


def test_metrics_count_the_layers_and_healthz_reports_the_camera_gone_and_back(tmp_path, line_port):
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("layer-0001.png", "layer-0002.png", "layer-0003.png"):
        shutil.copy(SAMPLE_BUILD / name, frames / name)
    appliance, url = start(tmp_path, line_port, folder=frames)
    try:
        verdicts = [layer(line_port, n) for n in (1, 2, 3)]
        wait_for_records(url, 3)
        status, text = get(url + "/healthz")
        assert status == 200 and "up" in text, text
        values = metrics(url)
        assert values[("bedsight_layers_total", ())] == 3
        for word in ("PASS", "RECOAT", "REVIEW", "PAUSE", "FAULT"):
            assert values[("bedsight_verdicts_total", (("verdict", word),))] == verdicts.count(word)
        assert values[("bedsight_stage_seconds_count", (("stage", "infer"),))] == 3
        assert values[("bedsight_stage_seconds_bucket", (("le", "+Inf"), ("stage", "total")))] == 3
        assert values[("bedsight_stage_seconds_sum", (("stage", "infer"),))] > 0
        assert values[("bedsight_layer_seconds_count", ())] == 3
        assert values[("bedsight_camera_errors_total", ())] == 0

        # The replay is used up: the camera is gone, the layer is a FAULT and health says why.
        assert layer(line_port, 4) == "FAULT"
        wait_for_records(url, 4)
        status, text = get(url + "/healthz")
        assert status == 503 and "camera" in text and "no more frames" in text, text
        values = metrics(url)
        assert values[("bedsight_camera_errors_total", ())] == 1
        assert values[("bedsight_verdicts_total", (("verdict", "FAULT"),))] == verdicts.count("FAULT") + 1
        assert values[("bedsight_layers_total", ())] == 4

        # A frame written into the folder during the run: the camera is back.
        shutil.copy(SAMPLE_BUILD / "layer-0004.png", frames / "layer-0004.png")
        assert layer(line_port, 5) != "FAULT"
        wait_for_records(url, 5)
        status, text = get(url + "/healthz")
        assert status == 200 and "up" in text, text
        appliance.wait_for(r"^layer 5 \w+ .*layer-0004\.png")
        assert appliance.stop() == 0
    finally:
        appliance.kill()


class ReportParser(html.parser.HTMLParser):
    """What a reader of the report sees: layer rows, embedded images, stacked cells."""

    def __init__(self):
        super().__init__()
        self.rows = 0
        self.row_verdicts = []
        self.images = []
        self.stack_cells = 0
        self.external = []
        self._in_verdict = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "tr" and "layer-row" in classes:
            self.rows += 1
        if tag == "td" and "verdict" in classes:
            self._in_verdict = True
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "rect" and "stack-cell" in classes:
            self.stack_cells += 1
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])

    def handle_data(self, data):
        if self._in_verdict:
            self.row_verdicts.append(data)
            self._in_verdict = False


def test_the_size_limit_keeps_non_pass_layers_and_the_report_shows_the_build(tmp_path, line_port):
    import base64

    # Room for about two layers' images (~0.5 MB each) out of twelve.
    appliance, url = start(tmp_path, line_port, record="max_gb = 0.001\n")
    try:
        verdicts = []
        for n in range(1, 13):
            verdicts.append(layer(line_port, n))
            # One layer at a time through the recorder: none is dropped for being behind.
            wait_until(lambda: metrics(url)[("bedsight_layer_images_written_total", ())] == n, f"layer {n}'s images written")
        values = metrics(url)
        assert values[("bedsight_layer_images_dropped_total", ())] == 0
        deleted = int(values[("bedsight_layer_images_deleted_total", ())])
        # The dashboard knows which layers' images are gone.
        state = json.loads(get(url + "/api/state")[1])
        assert sum(not r["images"] for r in state["records"]) == deleted > 0
        gone = next(r["index"] for r in state["records"] if not r["images"])
        assert get(f"{url}/images/{gone}/overlay.png")[0] == 404
        assert appliance.stop() == 0
    finally:
        appliance.kill()
    report_line = next(line for line in appliance.seen if line.startswith("report: "))
    assert Path(report_line.removeprefix("report: ")) == tmp_path / "journal" / "build-report.html"

    images = tmp_path / "images"
    kept = sorted(p.name for p in images.iterdir() if p.is_dir())
    kept_index = {int(name.split("-")[0]) for name in kept}
    pass_layers = [i for i, v in enumerate(verdicts) if v == "PASS"]
    other_layers = [i for i, v in enumerate(verdicts) if v != "PASS"]
    assert pass_layers and other_layers, verdicts
    assert set(other_layers) <= kept_index, (kept, verdicts)
    kept_pass = sorted(kept_index & set(pass_layers))
    # The oldest PASS layers went first: what is left of them is the newest ones.
    assert kept_pass == pass_layers[len(pass_layers) - len(kept_pass):], (kept, verdicts)
    assert len(kept_pass) < len(pass_layers)
    pass_bytes = sum(f.stat().st_size for p in images.iterdir() if p.is_dir() and int(p.name.split("-")[0]) in kept_pass for f in p.iterdir())
    all_bytes = sum(f.stat().st_size for p in images.iterdir() if p.is_dir() for f in p.iterdir())
    assert all_bytes <= 1e6 or pass_bytes == 0
    for name in kept:
        assert (images / name / "raw.png").is_file()

    out = tmp_path / "report.html"
    result = run("report", "--journal", tmp_path / "journal" / "layers.bsj", "--images", images, "--out", out)
    assert result.returncode == 0, result.stderr
    parser = ReportParser()
    parser.feed(out.read_text())
    assert parser.rows == 12
    assert parser.row_verdicts == verdicts
    assert parser.external == [], "the report must not load anything from outside"
    embedded = [src for src in parser.images if src.startswith("data:image/png;base64,")]
    assert embedded and len(embedded) == len(parser.images)
    for src in embedded:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(embedded) == min(len(other_layers), 6)
    assert parser.stack_cells > 0
    text = out.read_text()
    for word in ("PASS", "RECOAT", "REVIEW", "PAUSE", "FAULT"):
        assert f'data-verdict="{word}">{verdicts.count(word)}<' in text
    assert text.count('class="pt-unc"') == 12
