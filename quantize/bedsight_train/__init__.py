"""bedsight-train: the off-device tool that turns labelled powder-bed layer images into a model image.

One module per job: `synth` (synthetic layers), `data` (datasets and splits), `models` (ISDNet-SR and
AM-SegNet), `losses`, `metrics`, `train`, `calibrate`, `export`, `quant`, `evaluate`, `select`,
`pack`, and `cli` which wires them into the `bedsight-train` command.
"""

__version__ = "0.1.0"
