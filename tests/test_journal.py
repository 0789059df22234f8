"""`bedsight run` writes one journal record per layer, with the verdict the PLC heard; `journal
check` and `journal export` read it back, and a torn last record is cut on the next start."""
import csv
import datetime
import io
import json
import re

from conftest import SAMPLE_BUILD, run
from run_harness import Appliance, LinePort, serial_line_config


def test_each_layer_the_plc_hears_is_in_the_journal(tmp_path):
    port = LinePort()
    config = serial_line_config(tmp_path, port.path, SAMPLE_BUILD, repeat=True)
    state_dir = tmp_path / "state"
    journal = state_dir / "journal" / "layers.bsj"
    appliance = Appliance(config, "--state-dir", state_dir)
    heard = {}
    try:
        assert appliance.wait_for(r"^journal: .*$").group(0).endswith(": 0 records")
        appliance.wait_for(r"^ready$")
        for layer in (1, 2, 3):
            port.send(f"LAYER {layer}\r\n".encode())
            answer = port.read_line()
            assert answer.startswith(f"VERDICT {layer} "), answer
            heard[layer] = answer.split()[2]
            appliance.wait_for(rf"^layer {layer} ")
    finally:
        assert appliance.stop() == 0, appliance.stderr
        port.close()

    exported = run("journal", "export", journal, "--format", "jsonl", check=True)
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(r["layer"], r["verdict"]) for r in records] == sorted(heard.items())
    assert all(r["trigger"] == "serial line" and r["model"] and r["backend"] and r["total_ms"] > 0 for r in records), records

    table = list(csv.DictReader(io.StringIO(run("journal", "export", journal, "--format", "csv", check=True).stdout)))
    assert [(int(row["layer"]), row["verdict"]) for row in table] == sorted(heard.items())
    # what an operator follows a layer by: the record's index and image folder, the time, each
    # class's area, the rule and its reason
    for index, (row, record) in enumerate(zip(table, records)):
        assert int(row["record"]) == index and row["images"] == f"{index:06}-L{record['layer']:05}-{record['verdict']}"
        when = datetime.datetime.fromtimestamp(record["time_ms"] / 1000, datetime.timezone.utc)
        assert row["time"] == when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{record['time_ms'] % 1000:03d}Z"
        assert (row["rule"], row["reason"], int(row["reason_code"])) == (record["rule"], record["reason"], record["reason_code"])
        # the default model has no layer-level head (no call) and a domain check (a score per layer)
        assert not record["layer_class"] and not row["layer_class"], (record, row)
        assert set(record["domain"]) == {"score", "threshold", "familiar"}, record
        domain = record["domain"]
        assert (row["domain_score"], row["domain_familiar"]) == (f"{domain['score']:.3f}", str(domain["familiar"]).lower()), (row, domain)
        class_columns = [k for k in row if k.startswith("area_")]
        assert abs(sum(float(row[k]) for k in class_columns) - float(row["total_area_mm2"])) < 0.01 * len(class_columns) + 1e-9
        for k in class_columns:
            cls = k[len("area_") : -len("_mm2")]
            assert abs(float(row[k]) - sum(d["area_mm2"] for d in record["defects"] if d["class"] == cls)) < 0.001

    check = run("journal", "check", journal, check=True)
    assert "3 records, layers 1 to 3" in check.stdout
    assert "no bad tail" in check.stdout

    # A power cut in the middle of the third record: check says so and changes nothing; the
    # next start cuts it and keeps the first two.
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-5])
    check = run("journal", "check", journal, check=True)
    assert "2 records, layers 1 to 2" in check.stdout
    assert "would be cut" in check.stdout
    assert journal.stat().st_size == len(whole) - 5

    port = LinePort()
    config = serial_line_config(tmp_path, port.path, SAMPLE_BUILD, repeat=True)
    appliance = Appliance(config, "--state-dir", state_dir)
    try:
        line = appliance.wait_for(r"^journal: .*$").group(0)
        appliance.wait_for(r"^ready$")
    finally:
        assert appliance.stop() == 0, appliance.stderr
        port.close()
    cut = re.search(r": 2 records, cut (\d+) bytes: torn record at byte \d+: .*\(the last record\)$", line)
    assert cut, line
    assert journal.stat().st_size == len(whole) - 5 - int(cut.group(1))
    assert [r["layer"] for r in map(json.loads, run("journal", "export", journal, "--format", "jsonl", check=True).stdout.splitlines())] == [1, 2]


def test_checking_a_file_that_is_not_a_journal_says_what_it_is_and_moves_nothing(tmp_path):
    notes = tmp_path / "notes.bsj"
    notes.write_text("hello")
    result = run("journal", "check", notes)
    assert result.returncode != 0
    assert result.stderr.strip() == f'error: journal {notes}: not a bedsight journal (it does not start with "BSJRNL03")'
    assert notes.read_text() == "hello"
