"""The labelling page (issue 15) in real headless Chromium: an operator opens a recorded layer,
starts from the model's mask, draws a polygon and a brush stroke with the mouse, saves with the
dashboard token; after a reload the labels are there, and the files on disk hold them in the
label store that the training tool reads (bedsight_train.labels)."""
import json

import numpy as np
from PIL import Image

from chromium import Chromium
from conftest import MODEL_SIZE
from test_dashboard import TOKEN, get, layer, start, wait_until

STREAK = [(20, 30), (120, 30), (120, 40), (20, 40)]  # bed pixels
STROKE = [(200 + 2 * i, 200) for i in range(16)]


def click(browser, x, y, count=1):
    for kind in ("mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=1 if kind == "mousePressed" else 0, clickCount=count)


def page_xy(browser, bed_x, bed_y):
    """Where bed pixel (x, y) is on the page, at the page's zoom."""
    r = browser.evaluate("(() => { const r = document.getElementById('canvas').getBoundingClientRect(); return [r.left, r.top, window.labeller.zoom]; })()")
    return r[0] + (bed_x + 0.5) * r[2], r[1] + (bed_y + 0.5) * r[2]


def counts(browser):
    return browser.evaluate("Array.from(window.labeller.mask.reduce((c, k) => (c[k]++, c), new Array(6).fill(0)))")


def test_label_a_layer_with_the_mouse_save_and_find_it_again(tmp_path, line_port):
    appliance, url = start(tmp_path, line_port)
    browser = None
    try:
        assert layer(line_port, 1) == "PASS"
        assert layer(line_port, 2) == "PAUSE"  # the sample build's super-elevation
        wait_until(lambda: get(f"{url}/api/labels/1")[0] == 200, "layer images of record 1")
        info = json.loads(get(f"{url}/api/labels/1")[1])
        assert info["saved"] is None and (info["width"], info["height"]) == MODEL_SIZE
        name = info["name"]
        model_mask = np.asarray(Image.open(tmp_path / "images" / name / "mask.png"))

        # from the dashboard, as an operator goes there: the live layer's "Label this layer"
        browser = Chromium(f"{url}/")
        browser.wait_for("(document.getElementById('label-link') || {href: ''}).href.endsWith('/label/1')", what="the link to label record 1")
        browser.evaluate("document.getElementById('label-link').click()")
        browser.wait_for("window.labeller && window.labeller.ready", what="the labelling page ready")
        assert browser.evaluate("document.getElementById('status').textContent") == "not labelled yet: starting from the model's mask"
        # the proposal is the model's mask, pixel for pixel
        assert counts(browser) == np.bincount(model_mask.ravel(), minlength=6).tolist()

        # a streak outlined as a polygon: four clicks, then a click on the first point closes it
        browser.evaluate("document.getElementById('class').value = 'streaking'")
        for x, y in STREAK + STREAK[:1]:
            click(browser, *page_xy(browser, x, y))
        # an uncovered patch brushed in
        browser.evaluate("document.querySelector('input[value=brush]').click(); document.getElementById('class').value = 'incompleteness'; document.getElementById('radius').value = 5")
        x0, y0 = page_xy(browser, *STROKE[0])
        browser.call("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y0, button="left", buttons=1, clickCount=1)
        for x, y in STROKE[1:]:
            browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=page_xy(browser, x, y)[0], y=y0, button="left", buttons=1)
        browser.call("Input.dispatchMouseEvent", type="mouseReleased", x=page_xy(browser, *STROKE[-1])[0], y=y0, button="left", buttons=0, clickCount=1)
        drawn = counts(browser)
        assert drawn[4] > 900 and drawn[2] > 250, drawn  # about 101 x 11 streak pixels; a 30 x 10 stroke
        assert browser.evaluate("window.labeller.polygons.length") == 1
        # the eraser takes a bite out of the model's super-elevation; undo gives it back
        ys, xs = np.nonzero(model_mask == 1)
        browser.evaluate("document.querySelector('input[value=eraser]').click()")
        click(browser, *page_xy(browser, int(xs[0]), int(ys[0])))
        assert counts(browser)[1] < drawn[1]
        browser.evaluate("document.getElementById('undo').click()")
        assert counts(browser) == drawn

        # the wrong token: refused, nothing written
        browser.evaluate(f"document.getElementById('who').value = 'ana'; document.getElementById('token').value = 'wrong-token-999'; document.getElementById('save').click()")
        browser.wait_for("document.getElementById('status').textContent.startsWith('not saved (403)')", what="the refusal")
        assert not (tmp_path / "labels").exists()
        browser.evaluate(f"document.getElementById('token').value = {TOKEN!r}; document.getElementById('save').click()")
        browser.wait_for("document.getElementById('status').textContent.startsWith('saved by ana at ')", what="the save")
        browser.screenshot("labelling-saved.png")

        # reloaded: the labels are there, not the model's mask
        browser.call("Page.reload", ignoreCache=True)
        browser.wait_for("window.labeller && window.labeller.ready", what="the page ready again")
        assert counts(browser) == drawn
        polygon = browser.evaluate("window.labeller.polygons")
        assert [(p["class"], [tuple(round(v) for v in q) for q in p["points"]]) for p in polygon] == [("streaking", [(20, 30), (120, 30), (120, 40), (20, 40)])]
        assert browser.evaluate("document.getElementById('status').textContent").startswith("saved by ana at ")
    finally:
        if browser:
            browser.close()
        appliance.stop()

    # the files: the label store the training tool reads and exports for CVAT and labelme
    from bedsight_train.labels import read_store

    (saved,) = read_store(tmp_path / "labels")
    assert saved.name == name and saved.labelled_by == "ana" and saved.labelled_at.endswith("Z")
    assert saved.image == f"{name}/rectified.png"
    assert np.bincount(saved.mask.ravel(), minlength=6).tolist() == drawn
    assert saved.polygons[0]["class"] == "streaking" and len(saved.polygons[0]["points"]) == 4
    # the model's super-elevation stays where nobody drew over it
    assert (saved.mask[model_mask == 1] == 1).all()


def test_bad_saves_are_refused_by_name_and_write_nothing(tmp_path, line_port):
    import base64

    appliance, url = start(tmp_path, line_port)
    try:
        assert layer(line_port, 1) == "PASS"
        wait_until(lambda: get(f"{url}/api/labels/0")[0] == 200, "layer images of record 0")
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        good = {"labelled_by": "ana", "polygons": [], "mask": base64.b64encode(bytes(MODEL_SIZE[0] * MODEL_SIZE[1])).decode()}

        def save(body, headers=auth, record=0):
            return get(f"{url}/api/labels/{record}", "POST", headers, json.dumps(body).encode() if isinstance(body, dict) else body)

        assert save(good, headers={})[0] == 401
        assert save(b"{not json")[0] == 400
        status, message = save(dict(good, mask=base64.b64encode(bytes(100)).decode()))
        assert (status, message.strip()) == (400, f"mask: 100 class indices, but the bed is {MODEL_SIZE[0]}x{MODEL_SIZE[1]} = {MODEL_SIZE[0] * MODEL_SIZE[1]} pixels")
        status, message = save(dict(good, polygons=[{"class": "scratch", "points": [[0, 0], [5, 0], [5, 5]]}]))
        assert status == 400 and message.startswith('polygons[0]: class "scratch" is not one of super-elevation'), message
        assert save(good, record=7)[0] == 404  # no such record
        assert get(f"{url}/labels/0/mask.png")[0] == 404
        assert get(f"{url}/label/x")[0] == 400
        assert not (tmp_path / "labels").exists()
        status, body = save(good)
        assert status == 200 and json.loads(body)["labelled_by"] == "ana"
        assert get(f"{url}/labels/0/mask.png")[0] == 200
    finally:
        appliance.stop()


def test_saves_of_one_layer_at_once_each_keep_their_revision(tmp_path, line_port):
    """Two people saving the same layer at the same moment (each request has its own thread):
    one save is the labels, the others are kept as revisions, whole, and no half-written file is
    left behind."""
    import base64
    import threading

    appliance, url = start(tmp_path, line_port)
    try:
        layer(line_port, 1)
        wait_until(lambda: get(f"{url}/api/labels/0")[0] == 200, "layer images of record 0")
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        mask = base64.b64encode(bytes(MODEL_SIZE[0] * MODEL_SIZE[1])).decode()
        people = ["ana", "ben", "cem", "dov", "eva", "fay"]
        answers = {}

        def save(person):
            body = json.dumps({"labelled_by": person, "polygons": [], "mask": mask}).encode()
            answers[person] = get(f"{url}/api/labels/0", "POST", auth, body)[0]

        threads = [threading.Thread(target=save, args=(person,)) for person in people]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == {person: 200 for person in people}
        store = tmp_path / "labels"
        current = json.loads(next(store.glob("*.labels.json")).read_text())
        revisions = [json.loads(p.read_text()) for p in (store / "revisions").glob("*.labels.json")]
        # every save is there once: the last as the labels, the others as revisions 1 to 5
        assert sorted([current["labelled_by"]] + [r["labelled_by"] for r in revisions]) == people
        assert sorted(p.name.split(".")[-3] for p in (store / "revisions").glob("*.labels.json")) == ["1", "2", "3", "4", "5"]
        assert not list(store.rglob("*.part"))
    finally:
        appliance.stop()
