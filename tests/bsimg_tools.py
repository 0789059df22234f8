"""Making model images and boxes for the slot and flash tests: small signed images packed from
assets/default-model with keys from `bedsight image keygen`, broken copies of them, and a
"box" (a state folder with trusted keys) that `bedsight image install --state-dir` works on."""
import base64
import hashlib
import io
import re
import tarfile
from pathlib import Path

from conftest import ASSETS, run

MODEL = ASSETS / "default-model"


def training_manifest(version: str, members: int | None = None, without_domain: bool = False) -> str:
    """The default model's manifest as the training tool writes it (no [graphs]/[files]), with
    another version and, when given, another number of members; `without_domain` leaves out its
    domain check's tables."""
    dropped = {"[graphs]", "[files]"} | ({"[domain]", "[[domain.groups]]"} if without_domain else set())
    out, skipping = [], False
    for line in (MODEL / "manifest.toml").read_text().splitlines():
        if line.startswith("["):
            skipping = line.strip() in dropped
        if not skipping:
            out.append(line)
    text = "\n".join(out) + "\n"
    text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text)
    if members is not None:
        text = re.sub(r"(?m)^members = \d+$", f"members = {members}", text)
        temps = ", ".join(["1.0"] * members)
        text = re.sub(r"(?m)^temperatures = \[[^\]]*\]$", f"temperatures = [{temps}]", text)
    return text


def keygen(folder: Path, owner: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    run("image", "keygen", folder / owner, check=True)
    return folder / f"{owner}.key", folder / f"{owner}.pub"


def pack(out: Path, version: str, key: Path | None, expected_mask: Path | None = None) -> Path:
    """`bedsight image pack` of the default model (INT8 default, fp32 beside it, self-test)."""
    manifest = out.with_suffix(".manifest.toml")
    manifest.write_text(training_manifest(version))
    args = ["image", "pack", "--onnx", MODEL / "model.onnx", "--int8", MODEL / "model.int8.onnx",
            "--manifest", manifest, "--selftest-input", MODEL / "selftest" / "input.png",
            "--selftest-mask", expected_mask or MODEL / "selftest" / "expected_mask.png", "-o", out]
    if key is not None:
        args += ["--key", key]
    run(*args, check=True)
    return out


def entries(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as archive:
        return [(member, archive.extractfile(member).read()) for member in archive.getmembers()]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A ustar archive of regular files, in the given order (as `bedsight image pack` writes)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return path


def flip_byte(src: Path, out: Path, entry: str, at: int) -> Path:
    """A copy of `src` with one byte of `entry`'s content changed (tar headers left intact)."""
    data = bytearray(src.read_bytes())
    with tarfile.open(src) as archive:
        offset = archive.getmember(entry).offset_data
    data[offset + at] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def manifest_with_files(text: str, files: dict[str, bytes]) -> str:
    """Adds [graphs] and [files] to a training manifest, as pack does, without pack's checks."""
    text += '\n[graphs]\ndefault = "model.int8.onnx"\nfp32 = "model.onnx"\n\n[files]\n'
    for name, data in sorted(files.items()):
        text += f'"{name}" = "{hashlib.sha256(data).hexdigest()}"\n'
    return text


# Ed25519 signing (RFC 8032, section 6's reference code), so tests can sign manifests that
# `bedsight image pack` would refuse to write, without OpenSSL or a Python crypto package.
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P


def _point_add(a, b):
    x = (a[1] - a[0]) * (b[1] - b[0]) % _P
    y = (a[1] + a[0]) * (b[1] + b[0]) % _P
    c = 2 * a[3] * b[3] * _D % _P
    d = 2 * a[2] * b[2] % _P
    e, f, g, h = y - x, d - c, d + c, y + x
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _point_mul(scalar, point):
    result = (0, 1, 1, 0)
    while scalar > 0:
        if scalar & 1:
            result = _point_add(result, point)
        point = _point_add(point, point)
        scalar >>= 1
    return result


def _compress(point):
    z_inverse = pow(point[2], _P - 2, _P)
    x, y = point[0] * z_inverse % _P, point[1] * z_inverse % _P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


def _base_point():
    y = 4 * pow(5, _P - 2, _P) % _P
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if x & 1:
        x = _P - x
    return (x, y, 1, x * y % _P)


def ed25519_sign(key: Path, message: bytes) -> bytes:
    """The 64-byte signature over `message` with a `bedsight image keygen` private key (PKCS#8
    PEM, RFC 8410: the 32-byte seed ends the DER)."""
    body = "".join(line for line in key.read_text().splitlines() if not line.startswith("-----"))
    seed = base64.b64decode(body)[-32:]
    digest = hashlib.sha512(seed).digest()
    scalar = (int.from_bytes(digest[:32], "little") & ((1 << 254) - 8)) | (1 << 254)
    base = _base_point()
    public = _compress(_point_mul(scalar, base))
    r = int.from_bytes(hashlib.sha512(digest[32:] + message).digest(), "little") % _L
    r_point = _compress(_point_mul(r, base))
    h = int.from_bytes(hashlib.sha512(r_point + public + message).digest(), "little") % _L
    return r_point + int.to_bytes((r + h * scalar) % _L, 32, "little")


def make_box(folder: Path, trusted_pub: Path) -> Path:
    """A state folder that trusts one key."""
    (folder / "trusted-keys").mkdir(parents=True)
    (folder / "trusted-keys" / trusted_pub.name).write_bytes(trusted_pub.read_bytes())
    return folder


def install(box: Path, image: Path, *extra, env=None):
    return run("image", "install", image, "--state-dir", box, "--backend", "tract", *extra, env=env)


def box_state(box: Path) -> dict:
    """What must not change when an install is refused: the active pointer, `image list`'s line
    for the active slot, and the sha256 of the active slot's manifest.toml as it is on disk."""
    listing = run("image", "list", "--state-dir", box, check=True).stdout
    active = (box / "active").read_text().strip() if (box / "active").exists() else None
    active_lines = [line for line in listing.splitlines() if re.match(r"^slot [ab]  active ", line)]
    manifest = box / "slots" / active / "manifest.toml" if active else None
    return {
        "active": active,
        "previous": (box / "previous").read_text().strip() if (box / "previous").exists() else None,
        "active_line": active_lines,
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest else None,
    }
