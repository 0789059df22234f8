"""`bedsight run` as a loop: a replay timer as the trigger, SIGTERM finishes and exits 0, and
configurations it cannot run are one clear error."""
import time

from run_harness import Appliance, replay_camera, write_config
from conftest import SAMPLE_BUILD, run


def test_timer_trigger_replays_the_build_and_sigterm_exits_zero(tmp_path, ledger):
    config = write_config(
        tmp_path,
        replay_camera(SAMPLE_BUILD)
        + f"""
[trigger]
kind = "timer"
interval_ms = 100
""",
        max_retries=0,
    )
    appliance = Appliance(config)
    try:
        appliance.wait_for(r"^ready$")
        names = sorted(ledger)
        # max_retries = 0: every RECOAT becomes PAUSE, so the layer number moves on each time.
        for layer in range(1, 5):
            match = appliance.wait_for(rf"^layer {layer} (\w+)")
            planted = ledger[names[layer - 1]] - {"lattice"}
            assert (match.group(1) == "PASS") == (not planted), appliance.seen[-1]
            assert match.group(1) != "RECOAT"
        started = time.monotonic()
        assert appliance.stop() == 0
        assert time.monotonic() - started < 10
        assert any(line.startswith("stopped after") for line in appliance.seen), appliance.seen
    finally:
        appliance.kill()


def test_run_without_a_camera_table_names_it(tmp_path):
    config = write_config(tmp_path, '[trigger]\nkind = "timer"\ninterval_ms = 100\n')
    result = run("run", "--config", config)
    assert result.returncode != 0
    assert "[camera] is missing" in result.stderr and str(config) in result.stderr, result.stderr


def test_a_missing_replay_folder_names_the_key(tmp_path):
    config = write_config(tmp_path, '[camera]\nkind = "replay"\nfolder = "no-such-folder"\n[trigger]\nkind = "timer"\ninterval_ms = 100\n')
    result = run("run", "--config", config)
    assert result.returncode != 0
    assert "camera.folder" in result.stderr and "no-such-folder" in result.stderr, result.stderr


def test_a_modbus_trigger_without_a_modbus_table_is_refused(tmp_path):
    config = write_config(tmp_path, f'[camera]\nkind = "replay"\nfolder = "{SAMPLE_BUILD}"\n[trigger]\nkind = "modbus"\n')
    result = run("run", "--config", config)
    assert result.returncode != 0
    assert 'trigger.kind = "modbus" needs [plc.modbus_tcp] or [plc.modbus_rtu]' in result.stderr, result.stderr


def test_a_missing_camera_is_one_error_naming_the_device_and_the_key(tmp_path):
    config = write_config(
        tmp_path,
        '[camera]\nkind = "v4l2"\ndevice = "/dev/bedsight-no-such-camera"\nwidth = 640\nheight = 480\npixel_format = "GREY"\n'
        '[trigger]\nkind = "timer"\ninterval_ms = 100\n',
    )
    result = run("run", "--config", config)
    assert result.returncode != 0
    assert "camera.device" in result.stderr and "/dev/bedsight-no-such-camera" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_missing_gpio_chip_is_one_error_naming_the_device_and_the_key(tmp_path):
    config = write_config(
        tmp_path,
        f'[camera]\nkind = "replay"\nfolder = "{SAMPLE_BUILD}"\n[trigger]\nkind = "gpio"\n'
        '[plc.gpio]\nchip = "/dev/gpiochip-bedsight-none"\nready = 5\nbusy = 6\nlayer_ready = 16\nactive_low = ["busy"]\n',
    )
    result = run("run", "--config", config)
    assert result.returncode != 0
    assert "plc.gpio.chip" in result.stderr and "GPIO chip /dev/gpiochip-bedsight-none" in result.stderr, result.stderr
