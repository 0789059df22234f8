"""Endurance: `bedsight run` replays the sample build layer after layer, triggered and read by a
real Modbus RTU master (pymodbus) over a pseudo-terminal, the way a PLC runs a long build.

Checked: no verdict missed (every layer answered, in sequence, with the verdict its frame must
get), resident memory after the last layer within 5% of after layer 100, and the same open file
descriptors after the last layer as after layer 100.

The normal suite runs 300 layers (about a minute); `pytest --soak-long` or
BEDSIGHT_SOAK_LAYERS=5000 runs a real build's worth (docs/performance.md has the figures)."""
import os
import time
from pathlib import Path

from pymodbus.client import ModbusSerialClient

from conftest import SAMPLE_BUILD
from run_harness import Appliance, PtyRelay, modbus_rtu, replay_over_modbus, write_config
from test_modbus import STATE_VERDICT_READY, VERDICT_CODES, expected_verdicts

UNIT = 3
BASELINE_LAYER = 100


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no VmRSS")


def open_fds(pid: int) -> list[str]:
    """What each open descriptor points at (sockets and pipes by inode), sorted."""
    folder = Path(f"/proc/{pid}/fd")
    targets = []
    for name in os.listdir(folder):
        try:
            targets.append(os.readlink(folder / name))
        except FileNotFoundError:
            pass  # closed between the listing and the read
    return sorted(targets)


def settled_fds(pid: int, timeout: float = 10.0) -> list[str]:
    """The open descriptors once the image recorder (its own thread, writing the last layers'
    PNGs after the verdict) is done: the same listing three times in a row, no half-written
    layer folder in it."""
    deadline = time.monotonic() + timeout
    readings = []
    while time.monotonic() < deadline:
        fds = open_fds(pid)
        readings = (readings + [fds])[-3:]
        if len(readings) == 3 and readings[0] == readings[1] == readings[2] and not any("/.tmp-" in fd for fd in fds):
            return fds
        time.sleep(0.1)
    raise AssertionError(f"open descriptors did not settle within {timeout} s: {readings}")


def test_soak_every_layer_answered_memory_and_descriptors_flat(tmp_path, ledger, soak_layers):
    assert soak_layers > BASELINE_LAYER
    relay = PtyRelay()
    config = write_config(
        tmp_path,
        replay_over_modbus(SAMPLE_BUILD, modbus_rtu(relay.appliance_path, 115200, unit_id=UNIT), repeat=True)
        + f"""
[journal]
path = "{tmp_path / 'layers.bsj'}"
""",
    )
    appliance = Appliance(config)
    client = None
    pid = appliance.process.pid
    try:
        appliance.wait_for(r"^ready$")
        client = ModbusSerialClient(relay.master_path, baudrate=115200, parity="N", timeout=5, retries=2)
        assert client.connect()
        # Reads the master had to repeat: on a loaded machine a late answer can arrive after
        # pymodbus gave up on it and be taken for the next one's; a PLC repeats such a read too.
        repeated = 0

        def read(address, count):
            nonlocal repeated
            for _ in range(3):
                reply = client.read_holding_registers(address, count=count, device_id=UNIT)
                if not reply.isError() and len(reply.registers) == count:
                    return reply.registers
                repeated += 1
                time.sleep(0.2)
                client.close()
                assert client.connect()
            raise AssertionError(f"read of {count} registers at {address} failed three times: {reply}")

        expected_pass = expected_verdicts(ledger)
        frames = len(expected_pass)
        sequence = read(6, 1)[0]
        verdicts = {}
        baseline = None
        started = time.monotonic()
        for layer in range(1, soak_layers + 1):
            reply = client.write_registers(100, [layer & 0xFFFF, layer >> 16, 1], device_id=UNIT)
            assert not reply.isError(), f"layer {layer}: trigger refused: {reply}"
            deadline = time.monotonic() + 20
            while True:
                status = read(0, 17)
                if status[2] == STATE_VERDICT_READY and status[6] == (sequence + 1) & 0xFFFF:
                    break
                assert time.monotonic() < deadline, f"layer {layer}: no verdict within 20 s, status {status}"
                time.sleep(0.005)
            sequence += 1
            assert status[3] | (status[4] << 16) == layer, f"layer {layer}: the verdict is for layer {status[3] | (status[4] << 16)}"
            verdict = VERDICT_CODES[status[5]]
            must_pass = expected_pass[(layer - 1) % frames]
            assert (verdict == "PASS") == must_pass, f"layer {layer} (frame {(layer - 1) % frames + 1}): {verdict}"
            verdicts[layer] = verdict
            assert not client.write_register(102, 2, device_id=UNIT).isError(), f"layer {layer}: acknowledge refused"
            if layer == BASELINE_LAYER:
                baseline = (resident_kib(pid), settled_fds(pid))
        elapsed = time.monotonic() - started
        rss_end, fds_end = resident_kib(pid), settled_fds(pid)
        rss_base, fds_base = baseline
        print(
            f"\nsoak: {soak_layers} layers in {elapsed:.0f} s ({elapsed / soak_layers * 1e3:.0f} ms per layer, Modbus RTU 115200 baud); "
            f"RSS after layer {BASELINE_LAYER} {rss_base / 1024:.1f} MiB, after layer {soak_layers} {rss_end / 1024:.1f} MiB "
            f"({(rss_end / rss_base - 1) * 100:+.2f}%); open fds {len(fds_base)} -> {len(fds_end)}; reads repeated {repeated}"
        )
        assert len(verdicts) == soak_layers
        assert repeated <= soak_layers // 100, f"{repeated} reads had to be repeated"
        assert abs(rss_end - rss_base) <= 0.05 * rss_base, f"RSS {rss_base} KiB after layer {BASELINE_LAYER}, {rss_end} KiB after layer {soak_layers}"
        assert fds_end == fds_base, f"open descriptors changed:\n{fds_base}\n{fds_end}"

        assert appliance.stop() == 0
        # Every layer's line on stdout, and one journal record per layer.
        logged = {int(line.split()[1]): line.split()[2] for line in appliance.seen if line.startswith("layer ")}
        assert all(logged.get(layer) == verdict for layer, verdict in verdicts.items()), "a layer's stdout line is missing or disagrees"
        assert any(f"journal: {soak_layers} records" in line for line in appliance.seen), appliance.seen[-5:]
    finally:
        if client is not None:
            client.close()
        appliance.kill()
        relay.close()
