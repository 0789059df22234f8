"""`bedsight run` under systemd (board/systemd/bedsight.service, Type=notify), with this test as
the service manager: the notify socket hears READY once the loop is ready, WATCHDOG pings at half
the interval asked for, STOPPING on the way out; and the unit file says what the box needs."""
import configparser
import os
import shlex
import signal
import socket
import subprocess
import time

from conftest import REPO, SAMPLE_BUILD, bedsight_bin, scratch_state_dir
from run_harness import LOG_LINE, MODBUS_TCP_FREE_PORT, replay_over_modbus, write_config

UNIT = REPO / "board" / "systemd" / "bedsight.service"


def test_ready_watchdog_and_stopping_reach_the_service_manager(tmp_path):
    config = write_config(tmp_path, replay_over_modbus(SAMPLE_BUILD, MODBUS_TCP_FREE_PORT))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    notify.bind(str(path))
    notify.settimeout(0.05)
    env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000", BEDSIGHT_STATE_DIR=scratch_state_dir())
    # systemd sets WATCHDOG_PID to the service's pid: the shell's, which exec keeps
    command = f"WATCHDOG_PID=$$ exec {shlex.quote(bedsight_bin())} run --config {shlex.quote(str(config))}"
    process = subprocess.Popen(["sh", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    heard = []  # (seconds since start, message)
    start = time.monotonic()
    try:
        while time.monotonic() - start < 60 and not any(m.startswith("READY=1") for _, m in heard):
            try:
                heard.append((time.monotonic() - start, notify.recv(4096).decode().strip()))
            except socket.timeout:
                assert process.poll() is None, process.stderr.read()
        ready = next(m for _, m in heard if m.startswith("READY=1"))
        assert "STATUS=judging layers: model " in ready, ready
        # watchdog pings every 0.2 s (half of 0.4 s) while the loop turns
        ready_at = time.monotonic()
        while time.monotonic() - ready_at < 1.5:
            try:
                heard.append((time.monotonic() - start, notify.recv(4096).decode().strip()))
            except socket.timeout:
                pass
        pings = [t for t, m in heard if m == "WATCHDOG=1"]
        assert len(pings) >= 5, heard
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert max(gaps) < 0.4, gaps
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, process.stderr.read()
        while True:
            try:
                heard.append((time.monotonic() - start, notify.recv(4096).decode().strip()))
            except socket.timeout:
                break
        # the loop has stopped turning: STOPPING is the last word, no ping after it
        assert heard[-1][1] == "STOPPING=1", heard[-5:]
        stdout = process.stdout.read()
        assert "systemd: watchdog pinged every 0.2 s" in stdout, stdout
    finally:
        if process.poll() is None:
            process.kill()
        notify.close()


def test_the_unit_runs_the_loop_as_a_notify_service_with_a_watchdog():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys keep their case, as systemd reads them
    unit.read(UNIT)
    service = unit["Service"]
    assert (service["Type"], service["NotifyAccess"], service["Restart"]) == ("notify", "main", "on-failure")
    assert int(service["WatchdogSec"]) >= 10 and int(service["TimeoutStartSec"]) >= 300
    assert service["ExecStart"].split()[1:3] == ["run", "--config"]
    assert service["KillSignal"] == "SIGINT"  # the loop finishes the layer in flight on SIGINT
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_under_journald_a_pause_is_a_warning_and_a_pass_is_info(tmp_path, ledger):
    """With stdout going to the journal (systemd sets JOURNAL_STREAM), each layer's lines carry
    the `<N>` prefix journald files them under; a terminal sees them plain (every other test)."""
    from run_harness import replay_camera

    frames = tmp_path / "frames"
    frames.mkdir()
    names = sorted(ledger)[:2]  # a clean layer, then a super-elevation the shipped rules PAUSE
    for name in names:
        (frames / name).write_bytes((SAMPLE_BUILD / name).read_bytes())
    config = write_config(tmp_path, replay_camera(frames) + '\n[trigger]\nkind = "timer"\ninterval_ms = 200\n')
    env = dict(os.environ, JOURNAL_STREAM="8:12345", BEDSIGHT_STATE_DIR=scratch_state_dir())
    process = subprocess.Popen([bedsight_bin(), "run", "--config", str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(line.startswith("<4>rule: ") for line in lines):
            line = process.stdout.readline()
            assert line, process.stderr.read()
            lines.append(line.rstrip("\n"))
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    layer_lines = [line for line in lines if ">layer " in line]
    assert layer_lines[0].startswith("<6>layer 1 PASS "), layer_lines
    assert layer_lines[1].startswith("<4>layer 2 PAUSE "), layer_lines
    assert any(line.startswith("<4>rule: rules.super-elevation.limit (code 257): ") for line in lines), lines
    # under journald no line carries its own time: journald keeps it
    assert not any(LOG_LINE.match(line) for line in lines), lines


def test_on_a_terminal_each_line_has_its_time_and_level(tmp_path, ledger):
    """Outside systemd every line of `bedsight run` starts with its UTC time and its level: a
    PASS is INFO, a PAUSE and its rule WARN, a camera that has no frame left an ERROR (FAULT)."""
    from datetime import datetime, timedelta, timezone

    from run_harness import Appliance, replay_camera

    frames = tmp_path / "frames"
    frames.mkdir()
    for name in sorted(ledger)[:2]:  # a clean layer, then a super-elevation the shipped rules PAUSE
        (frames / name).write_bytes((SAMPLE_BUILD / name).read_bytes())
    config = write_config(tmp_path, replay_camera(frames) + '\n[trigger]\nkind = "timer"\ninterval_ms = 200\n')
    started = datetime.now(timezone.utc)
    appliance = Appliance(config)
    try:
        appliance.wait_for(r"^layer 3 FAULT ", timeout=60)
    finally:
        appliance.stop()
    logged = appliance.logged
    assert all(level is not None for _, level, _ in logged), [m for _, level, m in logged if level is None]
    level_of = {message.split(" (")[0]: level for _, level, message in logged}
    assert level_of["ready"] == "INFO"
    layer = {message.split()[1]: (level, message.split()[2]) for _, level, message in logged if message.startswith("layer ")}
    assert (layer["1"], layer["2"], layer["3"]) == (("INFO", "PASS"), ("WARN", "PAUSE"), ("ERROR", "FAULT")), layer
    rule = next((level, message) for _, level, message in logged if message.startswith("rule: rules.super-elevation.limit (code 257): "))
    assert rule[0] == "WARN", rule
    times = [datetime.strptime(time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc) for time, _, _ in logged]
    assert times == sorted(times), times
    assert started - timedelta(seconds=1) <= times[0] and times[-1] <= datetime.now(timezone.utc) + timedelta(seconds=1), (started, times[0], times[-1])
