"""flash.sh against a local folder that stands for a box (--target), and over "ssh" (--host)
through a stand-in ssh/scp on PATH that runs the commands on this machine (the ssh command
lines flash.sh builds are what is checked).
Where openssh-server is installed, a test also starts an sshd of its own on a free port of
127.0.0.1 and flashes over real ssh. Exit codes: 0 done, 2 usage, 3 did not verify here, 4 copy failed, 5 the box refused it,
6 health check failed and rolled back, 7 rollback failed too."""
import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bsimg_tools import box_state, flip_byte, keygen, make_box, pack
from conftest import MODEL_NAME, MODEL_SIZE, REPO, bedsight_bin

FLASH = REPO / "flash.sh"


def flash(*args, env=None):
    env = {**os.environ, "BEDSIGHT_BIN": bedsight_bin(), **(env or {})}
    return subprocess.run([str(FLASH), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flash-kit")
    alice_key, alice_pub = keygen(folder / "keys", "alice")
    return {
        "alice_pub": alice_pub,
        "alice_key": alice_key,
        "v1": pack(folder / "v1.bsimg", "1.0.0", alice_key),
        "v2": pack(folder / "v2.bsimg", "2.0.0", alice_key),
    }


@pytest.fixture
def box(tmp_path, kit):
    return make_box(tmp_path / "box", kit["alice_pub"])


def test_flash_installs_activates_and_checks_health(box, kit):
    result = flash(kit["v1"], "--target", box)
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ["1/4 verifying", "signed by alice", "2/4 copying", "3/4 installing", "self-test on",
                 "4/4 health check", f"done: {MODEL_NAME} 1.0.0 is active"]:
        assert step in result.stdout, (step, result.stdout)
    assert box_state(box)["active"] == "a"

    result = flash(kit["v2"], "--target", box)
    assert result.returncode == 0, result.stdout + result.stderr
    state = box_state(box)
    assert state["active"] == "b" and state["previous"] == "a" and "2.0.0" in state["active_line"][0]
    assert not any((box / "incoming").iterdir()), "the copy is removed once installed"


def test_usage_errors_exit_2(box, kit):
    assert flash().returncode == 2
    assert flash(kit["v1"]).returncode == 2
    assert flash(kit["v1"], "--target", box, "--host", "root@box").returncode == 2
    assert flash(kit["v1"], "--target", box, env={"BEDSIGHT_BIN": "/nonexistent"}).returncode == 2


def test_an_image_that_does_not_verify_here_never_reaches_the_box(box, kit, tmp_path):
    flash(kit["v1"], "--target", box)
    before = box_state(box)
    broken = flip_byte(kit["v2"], tmp_path / "broken.bsimg", "model.onnx", 500)
    result = flash(broken, "--target", box)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "did not verify" in result.stderr and "model.onnx" in result.stderr, result.stderr
    assert "2/4" not in result.stdout
    assert box_state(box) == before


def test_an_image_the_box_refuses_leaves_it_as_it_was(box, kit, tmp_path):
    from PIL import Image
    flash(kit["v1"], "--target", box)
    before = box_state(box)
    mask = tmp_path / "wrong.png"
    Image.new("L", MODEL_SIZE, 4).save(mask)
    bad = pack(tmp_path / "bad.bsimg", "2.0.0", kit["alice_key"], expected_mask=mask)
    result = flash(bad, "--target", box)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "self-test failed" in result.stderr and "active model is unchanged" in result.stderr, result.stderr
    assert box_state(box) == before


def test_a_failed_health_check_rolls_back(box, kit, tmp_path):
    flash(kit["v1"], "--target", box)
    before = box_state(box)
    # A bedsight whose `image list` stops seeing an active image once slot b is active, as a box
    # whose new model fails to come up would.
    liar = tmp_path / "bedsight"
    liar.write_text(f"""#!/usr/bin/env bash
if [ "$1 $2" = "image list" ] && grep -q b "{box}/active"; then echo "slot b  active    (not responding)"; exit 0; fi
exec {bedsight_bin()} "$@"
""")
    liar.chmod(0o755)
    result = flash(kit["v2"], "--target", box, env={"BEDSIGHT_BIN": str(liar)})
    assert result.returncode == 6, result.stdout + result.stderr
    assert "health check failed" in result.stderr and "rolling back" in result.stdout, result.stdout + result.stderr
    assert "back on the previous model" in result.stderr, result.stderr
    state = box_state(box)
    assert (state["active"], state["active_line"], state["manifest_sha256"]) == (
        before["active"], before["active_line"], before["manifest_sha256"])


def test_flash_over_ssh(box, kit, tmp_path):
    """--host through stand-ins for ssh and scp that log their command lines and run locally."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    log = tmp_path / "ssh.log"
    (bin_dir / "ssh").write_text(f"""#!/usr/bin/env bash
# ssh [options] HOST COMMAND: run COMMAND here
echo "ssh $*" >> {log}
host="${{@: -2:1}}"; [ "$host" = "operator@box" ] || {{ echo "ssh: unknown host $host" >&2; exit 255; }}
exec bash -c "${{@: -1}}"
""")
    (bin_dir / "scp").write_text(f"""#!/usr/bin/env bash
# scp [options] SRC HOST:DST: copy here
echo "scp $*" >> {log}
dst="${{@: -1}}"; [ "${{dst%%:*}}" = "operator@box" ] || {{ echo "scp: unknown host ${{dst%%:*}}" >&2; exit 1; }}
exec cp "${{@: -2:1}}" "${{dst#*:}}"
""")
    for tool in ("ssh", "scp"):
        (bin_dir / tool).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "BEDSIGHT_REMOTE_BIN": bedsight_bin(),
        "BEDSIGHT_REMOTE_STATE_DIR": str(box),
    }
    result = flash(kit["v1"], "--host", "operator@box", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"done: {MODEL_NAME} 1.0.0 is active on operator@box" in result.stdout, result.stdout
    calls = log.read_text()
    assert "scp -q -o BatchMode=yes" in calls and "operator@box:/tmp/bedsight-flash-" in calls, calls
    assert "image install /tmp/bedsight-flash-" in calls and f"--state-dir {box}" in calls, calls
    assert "image list" in calls, calls
    assert box_state(box)["active"] == "a"

    # An unknown host: the copy fails, nothing changes.
    before = box_state(box)
    result = flash(kit["v2"], "--host", "operator@elsewhere", env=env)
    assert result.returncode == 4, result.stdout + result.stderr
    assert box_state(box) == before


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    """An sshd of the test's own on a free high port of 127.0.0.1, with a temporary host key and
    one authorised client key (./test.sh installs openssh-server)."""
    daemon = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").is_file() else None)
    if daemon is None or shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        pytest.fail("openssh-server is not installed: ./test.sh installs it (apt-get install openssh-server)")
    folder = tmp_path / "sshd"
    folder.mkdir()
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", folder / key], check=True)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    port = free_port()
    (folder / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {folder / 'host_key'}
AuthorizedKeysFile {folder / 'authorized_keys'}
PidFile {folder / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
""")
    process = subprocess.Popen([daemon, "-D", "-e", "-f", folder / "sshd_config"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start: {process.stderr.read() if process.poll() is not None else 'timeout'}")
            time.sleep(0.1)
        options = f"-i {folder / 'client_key'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
        yield {
            "host": f"{getpass.getuser()}@127.0.0.1",
            "FLASH_SSH": f"ssh -p {port} {options}",
            "FLASH_SCP": f"scp -q -P {port} {options}",
        }
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_flash_over_real_ssh_to_localhost(box, kit, sshd):
    env = {
        "FLASH_SSH": sshd["FLASH_SSH"],
        "FLASH_SCP": sshd["FLASH_SCP"],
        "BEDSIGHT_REMOTE_BIN": bedsight_bin(),
        "BEDSIGHT_REMOTE_STATE_DIR": str(box),
    }
    result = flash(kit["v1"], "--host", sshd["host"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"done: {MODEL_NAME} 1.0.0 is active on {sshd['host']}" in result.stdout, result.stdout
    result = flash(kit["v2"], "--host", sshd["host"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    state = box_state(box)
    assert state["active"] == "b" and state["previous"] == "a" and "2.0.0" in state["active_line"][0]
