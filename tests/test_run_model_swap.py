"""A running `bedsight run` picks up a newly installed model image between layers: no
restart, no missed layer, and each layer's line names the model that judged it."""
import re

from bsimg_tools import install, keygen, make_box, pack
from conftest import SAMPLE_BUILD
from run_harness import Appliance, LinePort, serial_line_config


def test_an_install_during_a_build_takes_effect_on_the_next_layer(tmp_path):
    secret, public = keygen(tmp_path / "keys", "owner")
    box = make_box(tmp_path / "box", public)
    first = pack(tmp_path / "first.bsimg", "1.0.0", secret)
    second = pack(tmp_path / "second.bsimg", "2.0.0", secret)
    assert install(box, first).returncode == 0

    port = LinePort()
    config = serial_line_config(tmp_path, port.path, SAMPLE_BUILD, repeat=True)
    appliance = Appliance(config, "--state-dir", box)
    try:
        appliance.wait_for(r"^ready$")
        port.send(b"LAYER 1\r\n")
        assert port.read_line().startswith("VERDICT 1 ")
        assert appliance.wait_for(r"^layer 1 .* model (\S+ \S+) ").group(1).endswith(" 1.0.0")

        result = install(box, second)
        assert result.returncode == 0, result.stderr

        for layer in (2, 3):
            port.send(f"LAYER {layer}\r\n".encode())
            assert port.read_line().startswith(f"VERDICT {layer} ")
        appliance.wait_for(r"^model: now \S+ 2\.0\.0 from slot b")
        assert appliance.wait_for(r"^layer 2 .* model (\S+ \S+) ").group(1).endswith(" 2.0.0")
        assert appliance.wait_for(r"^layer 3 .* model (\S+ \S+) ").group(1).endswith(" 2.0.0")
    finally:
        appliance.stop()
        port.close()
