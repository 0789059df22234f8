"""`bedsight run` as a Modbus server, driven by an independent Modbus master (pymodbus) the way
a PLC drives it: trigger by register write, poll the state until "verdict ready", read the
verdict and the areas, acknowledge. Over Modbus TCP on 127.0.0.1 and Modbus RTU over a
pseudo-terminal pair."""
import re
import shutil
import time

import pytest
from pymodbus.client import ModbusSerialClient, ModbusTcpClient

from run_harness import MODBUS_TCP_FREE_PORT, Appliance, PtyRelay, modbus_rtu, replay_over_modbus, write_config
from conftest import SAMPLE_BUILD

VERDICT_CODES = {1: "PASS", 2: "RECOAT", 3: "PAUSE", 4: "REVIEW", 5: "FAULT"}
STATE_READY, STATE_VERDICT_READY = 0, 3


def expected_verdicts(ledger):
    """PASS exactly where nothing but lattice was planted (as `bedsight demo` decides)."""
    return [not (ledger[name] - {"lattice"}) for name in sorted(ledger)]


def registers(client, address, count):
    reply = client.read_holding_registers(address, count=count)
    assert not reply.isError(), reply
    return reply.registers


def inspect_layer(client, layer, timeout=15.0):
    """Writes the layer number and the inspect command in one request, polls the state until
    the verdict is ready, returns the status registers 0..16."""
    sequence_before = registers(client, 6, 1)[0]
    reply = client.write_registers(100, [layer & 0xFFFF, layer >> 16, 1])
    assert not reply.isError(), reply
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = registers(client, 0, 17)
        if status[2] == STATE_VERDICT_READY and status[6] == (sequence_before + 1) & 0xFFFF:
            return status
        time.sleep(0.02)
    raise AssertionError(f"layer {layer}: no verdict within {timeout} s, status {status}")


def acknowledge(client):
    reply = client.write_register(102, 2)
    assert not reply.isError(), reply
    assert registers(client, 2, 1) == [STATE_READY]


def check_layer(status, layer, expect_pass):
    assert status[0] == 2, "map version"
    assert status[3] | (status[4] << 16) == layer
    verdict = VERDICT_CODES[status[5]]
    assert (verdict == "PASS") == expect_pass, f"layer {layer}: {verdict}"
    defects, total, largest, uncertainty, per_class = status[7], status[8], status[9], status[10], status[11:17]
    assert 0 <= uncertainty <= 1000
    if expect_pass:
        assert (defects, total, largest) == (0, 0, 0)
    else:
        assert defects > 0 and total > 0 and 0 < largest <= total
        # Per-class areas add up to the total (each rounded to 0.01 mm²; saturating at 655.35).
        if total < 65535:
            assert abs(sum(per_class) - total) <= len(per_class)
    return verdict


@pytest.fixture
def tcp_appliance(tmp_path):
    config = write_config(
        tmp_path,
        replay_over_modbus(SAMPLE_BUILD, MODBUS_TCP_FREE_PORT),
    )
    appliance = Appliance(config)
    try:
        port = int(appliance.wait_for(r"modbus tcp: listening on 127\.0\.0\.1:(\d+)").group(1))
        appliance.wait_for(r"^ready$")
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
        assert client.connect()
        yield appliance, client
        client.close()
    finally:
        appliance.kill()


def test_tcp_whole_layers_poll_read_acknowledge(tcp_appliance, ledger):
    appliance, client = tcp_appliance
    status = registers(client, 0, 17)
    assert status[0] == 2 and status[2] == STATE_READY and status[5] == 0
    expected = expected_verdicts(ledger)
    seen = []
    # Layer numbers past 65535 use the high word.
    for index, layer in enumerate([1, 2, 70_000 + 3, 4]):
        status = inspect_layer(client, layer)
        seen.append(check_layer(status, layer, expected[index]))
        assert status[6] == index + 1, "sequence number"
        acknowledge(client)
    assert all(verdict in ("PASS", "RECOAT", "PAUSE", "REVIEW") for verdict in seen), seen
    appliance.wait_for(rf"^layer 4 {seen[3]} ")
    assert appliance.stop() == 0
    assert any("stopped after 4 layers" in line for line in appliance.seen)


def test_tcp_heartbeat_counts_seconds(tcp_appliance):
    _, client = tcp_appliance
    first = registers(client, 1, 1)[0]
    time.sleep(2.3)
    assert 2 <= (registers(client, 1, 1)[0] - first) % 65536 <= 3


def test_tcp_a_second_trigger_during_a_layer_is_answered_busy(tcp_appliance):
    appliance, client = tcp_appliance
    assert not client.write_registers(100, [1, 0, 1]).isError()
    busy = client.write_registers(100, [2, 0, 1])
    assert busy.isError() and busy.exception_code == 6, busy
    deadline = time.monotonic() + 15
    while registers(client, 2, 1) != [STATE_VERDICT_READY]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert registers(client, 3, 2) == [1, 0], "the BUSY layer was not queued"
    # The next trigger, without an acknowledge, is accepted.
    status = inspect_layer(client, 2)
    assert status[3] == 2 and status[6] == 2
    appliance.stop()
    assert any("(1 triggers answered BUSY)" in line for line in appliance.seen), appliance.seen


def test_tcp_unmapped_addresses_and_bad_commands_get_exceptions(tcp_appliance):
    appliance, client = tcp_appliance
    for address, count in [(18, 1), (50, 1), (10, 10), (99, 2), (103, 1)]:
        reply = client.read_holding_registers(address, count=count)
        assert reply.isError() and reply.exception_code == 2, (address, count, reply)
    # The status registers are read-only.
    reply = client.write_register(5, 1)
    assert reply.isError() and reply.exception_code == 2
    # No coils are mapped: reading them is a function the box does not serve (exception 01).
    reply = client.read_coils(0, count=1)
    assert reply.isError() and reply.exception_code == 1
    # An unknown command value.
    reply = client.write_register(102, 9)
    assert reply.isError() and reply.exception_code == 3
    # Input registers read the same map.
    reply = client.read_input_registers(0, count=1)
    assert not reply.isError() and reply.registers == [2]
    # None of it stopped the loop.
    status = inspect_layer(client, 1)
    assert status[3] == 1
    assert appliance.stop() == 0


def test_rtu_over_a_pseudo_terminal(tmp_path, ledger):
    relay = PtyRelay()
    config = write_config(
        tmp_path,
        replay_over_modbus(SAMPLE_BUILD, modbus_rtu(relay.appliance_path, 19200, unit_id=7)),
    )
    appliance = Appliance(config)
    client = None
    try:
        appliance.wait_for(r"^ready$")
        client = ModbusSerialClient(relay.master_path, baudrate=19200, parity="N", timeout=2, retries=0)
        assert client.connect()
        expected = expected_verdicts(ledger)

        def read(address, count):
            reply = client.read_holding_registers(address, count=count, device_id=7)
            assert not reply.isError(), reply
            return reply.registers

        assert read(0, 3) == [2, read(1, 1)[0], STATE_READY]
        for layer in [1, 2]:
            assert not client.write_registers(100, [layer, 0, 1], device_id=7).isError()
            deadline = time.monotonic() + 15
            while True:
                status = read(0, 17)
                if status[2] == STATE_VERDICT_READY and status[6] == layer:
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.05)
            check_layer(status, layer, expected[layer - 1])
            assert not client.write_register(102, 2, device_id=7).isError()
            assert read(2, 1) == [STATE_READY]

        # A frame with a broken CRC is dropped without an answer; the next request works.
        relay.inject(bytes([7, 3, 0, 0, 0, 1, 0xDE, 0xAD]))
        time.sleep(0.2)
        reply = client.read_holding_registers(50, count=1, device_id=7)
        assert reply.isError() and reply.exception_code == 2
        assert read(0, 1) == [2]
        assert appliance.stop() == 0
        assert any(re.search(r"modbus: \d+ requests answered \(1 with an exception\), 1 frames dropped for a bad CRC", line) for line in appliance.seen), appliance.seen
    finally:
        if client is not None:
            client.close()
        appliance.kill()
        relay.close()


def test_a_missing_serial_port_is_one_error_naming_the_device_and_the_key(tmp_path):
    config = write_config(
        tmp_path,
        replay_over_modbus(SAMPLE_BUILD, '\n[plc.modbus_rtu]\nport = "/dev/bedsight-no-such-port"\n'),
    )
    appliance = Appliance(config)
    appliance.process.wait(timeout=20)
    stderr = appliance.process.stderr.read()
    assert appliance.process.returncode != 0
    assert "plc.modbus_rtu.port" in stderr and "/dev/bedsight-no-such-port" in stderr, stderr


def test_a_camera_without_frames_gives_fault_then_state_4(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(SAMPLE_BUILD / "layer-0001.png", folder / "layer-0001.png")
    config = write_config(
        tmp_path,
        replay_over_modbus(folder, MODBUS_TCP_FREE_PORT),
    )
    appliance = Appliance(config)
    try:
        port = int(appliance.wait_for(r"modbus tcp: listening on 127\.0\.0\.1:(\d+)").group(1))
        appliance.wait_for(r"^ready$")
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
        assert client.connect()
        assert VERDICT_CODES[inspect_layer(client, 1)[5]] != "FAULT"
        acknowledge(client)
        # The replay has run out: the camera gives nothing.
        status = inspect_layer(client, 2)
        assert VERDICT_CODES[status[5]] == "FAULT" and status[7] == 0
        assert not client.write_register(102, 2).isError()
        assert registers(client, 2, 1) == [4], "a standing fault after the FAULT is acknowledged"
        appliance.wait_for(r"^layer 2 FAULT .*camera")
        client.close()
        assert appliance.stop() == 0
    finally:
        appliance.kill()


def test_the_plc_link_is_down_until_a_plc_talks_and_healthz_metrics_and_page_say_so(tmp_path):
    import json
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def get(url):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(url):
        text = get(url + "/metrics")[1]
        return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples if not s.labels}

    appliance = Appliance(write_config(tmp_path, replay_over_modbus(SAMPLE_BUILD, MODBUS_TCP_FREE_PORT)))
    try:
        port = int(appliance.wait_for(r"modbus tcp: listening on 127\.0\.0\.1:(\d+)").group(1))
        url = appliance.wait_for(r"^dashboard: (http://127\.0\.0\.1:\d+)/$").group(1)
        appliance.wait_for(r"^ready$")
        # no PLC yet: the link is down, though nothing failed
        status, text = get(url + "/healthz")
        assert status == 503 and "plc: no PLC has made a request yet" in text, text
        values = metrics(url)
        assert (values["bedsight_plc_requests_total"], values["bedsight_plc_connections"], values["bedsight_plc_last_request_timestamp_seconds"]) == (0, 0, 0)
        state = json.loads(get(url + "/api/state")[1])["status"]
        assert (state["plc_up"], state["plc_link"]) == (False, "no PLC has made a request yet"), state

        client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
        assert client.connect()
        before = time.time()
        registers(client, 0, 17)
        status, text = get(url + "/healthz")
        assert status == 200, text
        values = metrics(url)
        assert values["bedsight_plc_requests_total"] == 1 and values["bedsight_plc_connections"] == 1, values
        assert before - 1 <= values["bedsight_plc_last_request_timestamp_seconds"] <= time.time() + 1, values
        state = json.loads(get(url + "/api/state")[1])["status"]
        assert state["plc_up"] is True and re.match(r"1 connected, last request \d+\.\d s ago, 1 answered", state["plc_link"]), state
        client.close()
        assert appliance.stop() == 0
    finally:
        appliance.kill()
