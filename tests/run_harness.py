"""Helpers for the tests of `bedsight run`: start the appliance with a configuration, read its
stdout line by line with time limits, connect pseudo-terminals, stop it with SIGTERM."""
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import threading
import time
import tty
from pathlib import Path

from conftest import bedsight_bin, scratch_state_dir

BASE_CONFIG = """
[bed]
width_mm = 250.0
height_mm = 250.0

[model]
backend = "auto"

[recoat]
max_retries = {max_retries}

[rules.super-elevation]
max_largest_area_mm2 = 15.0
verdict = "PAUSE"

[rules.incompleteness]
max_total_area_mm2 = 20.0
verdict = "RECOAT"

[rules.hopping]
max_total_area_mm2 = 20.0
verdict = "RECOAT"

[rules.streaking]
max_total_area_mm2 = 20.0
verdict = "RECOAT"
"""


# The dashboard is on by default at 127.0.0.1:8080; a test's appliance takes a free port instead.
FREE_PORT_DASHBOARD = '\n[dashboard]\naddress = "127.0.0.1:0"\n'


def write_config(tmp_path: Path, body: str, max_retries: int = 2, dashboard: str = FREE_PORT_DASHBOARD) -> Path:
    path = tmp_path / "bedsight.toml"
    path.write_text(BASE_CONFIG.format(max_retries=max_retries) + body + dashboard)
    return path


def replay_camera(folder, repeat: bool = False) -> str:
    """A `[camera]` table that replays the frames in `folder`."""
    return f'\n[camera]\nkind = "replay"\nfolder = "{folder}"\nrepeat = {str(repeat).lower()}\n'


def replay_over_modbus(folder, plc: str, repeat: bool = False) -> str:
    """The `[camera]` and `[trigger]` tables of a build replayed from `folder` and triggered by the
    PLC over Modbus, followed by `plc`, its `[plc.modbus_*]` table."""
    return replay_camera(folder, repeat) + '\n[trigger]\nkind = "modbus"\n' + plc


# A Modbus TCP server on a free port (the appliance prints the port it got).
MODBUS_TCP_FREE_PORT = '\n[plc.modbus_tcp]\nlisten = "127.0.0.1:0"\n'


def modbus_rtu(port: str, baud: int, unit_id: int = 1) -> str:
    """A `[plc.modbus_rtu]` table on the serial port `port`, no parity."""
    return f'\n[plc.modbus_rtu]\nport = "{port}"\nbaud = {baud}\nparity = "none"\nunit_id = {unit_id}\n'


def serial_line_config(
    tmp_path: Path, port_path: str, folder: Path, max_retries: int = 2, repeat: bool = False, dashboard: str = FREE_PORT_DASHBOARD
) -> Path:
    """A configuration that replays `folder` and takes LAYER lines on the serial port `port_path`."""
    return write_config(
        tmp_path,
        replay_camera(folder, repeat)
        + f"""
[trigger]
kind = "serial"

[plc.serial_line]
port = "{port_path}"
baud = 115200
""",
        max_retries=max_retries,
        dashboard=dashboard,
    )


# A line of `bedsight run` on a terminal (appliance/src/service/log.rs): its UTC time (RFC 3339),
# its level, the message.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (ERROR|WARN|NOTICE|INFO|DEBUG|TRACE) +(.*)$")


class Appliance:
    """A running `bedsight run --config FILE`, the messages of its stdout lines in a queue (time and
    level cut off: `logged` keeps them, a line without them has the level None)."""

    def __init__(self, config: Path, *extra):
        # Never the box's /var/lib/bedsight: a fresh state folder unless --state-dir is given,
        # removed when the appliance is stopped or killed.
        self.state_dir = scratch_state_dir()
        env = dict(os.environ, BEDSIGHT_STATE_DIR=self.state_dir)
        self.process = subprocess.Popen(
            [bedsight_bin(), "run", "--config", str(config), *map(str, extra)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.seen: list[str] = []
        self.logged: list[tuple[str | None, str | None, str]] = []  # (time, level, message) of every line
        self.stderr = ""
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.process.stdout:
            line = line.rstrip("\n")
            match = LOG_LINE.match(line)
            self.logged.append(match.groups() if match else (None, None, line))
            self.lines.put(match.group(3) if match else line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        """The first stdout line's message (from now on) that matches `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; saw:\n" + "\n".join(self.seen) + self._stderr_now())
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.process.wait(timeout=5)
                raise AssertionError(f"bedsight exited ({self.process.returncode}) before {pattern!r}; saw:\n" + "\n".join(self.seen) + self._stderr_now())
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def _stderr_now(self) -> str:
        if self.process.poll() is not None and self.process.stderr:
            self.stderr += self.process.stderr.read()
        return "\nstderr:\n" + self.stderr

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; kills it when it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
                raise AssertionError("bedsight did not stop within 15 s of SIGTERM")
        # Collect the rest of stdout.
        while True:
            try:
                line = self.lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        self.stderr += self.process.stderr.read() if self.process.stderr else ""
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return self.process.returncode

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def raw_pty():
    """A pseudo-terminal pair in raw mode: (master fd, slave fd, slave path)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    return master, slave, os.ttyname(slave)


class PtyRelay:
    """Two pseudo-terminals joined by a thread that copies bytes both ways (what `socat` does):
    the appliance opens `appliance_path`, the Modbus master opens `master_path`. A test may
    also write straight into the appliance's side with `inject`."""

    def __init__(self):
        self.a_master, self.a_slave, self.appliance_path = raw_pty()
        self.b_master, self.b_slave, self.master_path = raw_pty()
        self.running = True
        self.thread = threading.Thread(target=self._copy, daemon=True)
        self.thread.start()

    def _copy(self):
        pairs = {self.a_master: self.b_master, self.b_master: self.a_master}
        while self.running:
            ready, _, _ = select.select(list(pairs), [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if data:
                    os.write(pairs[fd], data)

    def inject(self, data: bytes):
        os.write(self.a_master, data)

    def close(self):
        self.running = False
        self.thread.join(timeout=2)
        for fd in (self.a_master, self.a_slave, self.b_master, self.b_slave):
            try:
                os.close(fd)
            except OSError:
                pass


class LinePort:
    """The PLC's end of a pseudo-terminal for the line protocol."""

    def __init__(self):
        self.master, self.slave, self.path = raw_pty()
        self.buffer = b""

    def send(self, data: bytes):
        os.write(self.master, data)

    def read_line(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line from bedsight within {timeout} s (have {self.buffer!r})")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                self.buffer += os.read(self.master, 4096)
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode("ascii")

    def close(self):
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
