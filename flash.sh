#!/usr/bin/env bash
# flash.sh: install a model image on a box, and put the old one back if anything goes wrong.
#
#   ./flash.sh IMAGE.bsimg --target DIR [options]       a box's state folder on this machine
#   ./flash.sh IMAGE.bsimg --host user@host [options]   a box over ssh
#
# Options:
#   --trusted-keys DIR  also check the signature here, against these public keys (default with
#                       --target: DIR/trusted-keys when it exists). The box always checks it
#                       against its own trusted keys.
#   --config FILE       the box's configuration file, for `bedsight image install --config`
#                       ([images] allow_unsigned, trusted_keys; [model] backend).
# Environment:
#   BEDSIGHT_BIN               bedsight on this machine (default: on PATH, else target/release)
#   BEDSIGHT_REMOTE_BIN        bedsight on the box, --host only (default: bedsight)
#   BEDSIGHT_REMOTE_STATE_DIR  the box's state folder, --host only (default: the box's own)
#   FLASH_SSH, FLASH_SCP       the ssh and scp commands (default: ssh/scp -o BatchMode=yes)
#
# Steps, each printed as it runs:
#   1 verify the image here (every file's sha256, the graphs against the manifest)
#   2 copy it to the box
#   3 install it on the box: `bedsight image install` verifies it against the box's trusted
#     keys, unpacks it into the idle slot, loads it with the box's backend, self-tests it and
#     only then switches the active slot
#   4 health check: `bedsight image list` must show this image (its manifest sha256) active and
#     self-tested
#   5 (only when 4 fails) `bedsight image rollback` to the model that was active before
#
# Exit status:
#   0  the image is installed, active and healthy
#   2  usage error, or no bedsight binary here
#   3  the image did not verify here; the box was not touched
#   4  the copy to the box failed; the box's model was not touched
#   5  the box refused to install it; its active model is unchanged
#   6  the health check failed; rolled back to the previous model
#   7  the health check failed and the rollback failed too: the box needs a person
set -euo pipefail

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
    echo "see the top of $0 for options, steps and exit codes" >&2
    exit 2
}
step() { echo "flash: $*"; }
fail() {
    local code=$1
    shift
    echo "flash: FAILED: $*" >&2
    exit "$code"
}

image="" target="" host="" trusted_keys="" config=""
[ $# -ge 1 ] || usage
image="$1"
shift
while [ $# -gt 0 ]; do
    case "$1" in
        --target) [ $# -ge 2 ] || usage; target="$2"; shift 2 ;;
        --host) [ $# -ge 2 ] || usage; host="$2"; shift 2 ;;
        --trusted-keys) [ $# -ge 2 ] || usage; trusted_keys="$2"; shift 2 ;;
        --config) [ $# -ge 2 ] || usage; config="$2"; shift 2 ;;
        -h | --help) usage ;;
        *) echo "flash: unknown argument $1" >&2; usage ;;
    esac
done
if { [ -n "$target" ] && [ -n "$host" ]; } || { [ -z "$target" ] && [ -z "$host" ]; }; then
    echo "flash: give exactly one of --target DIR and --host user@host" >&2
    usage
fi
[ -f "$image" ] || fail 2 "no model image at $image"

bedsight="${BEDSIGHT_BIN:-$(command -v bedsight || echo "$(dirname "$0")/target/release/bedsight")}"
[ -x "$bedsight" ] || fail 2 "no bedsight binary at $bedsight (set BEDSIGHT_BIN, or build it: cargo build --release)"
read -r -a ssh_cmd <<<"${FLASH_SSH:-ssh -o BatchMode=yes}"
read -r -a scp_cmd <<<"${FLASH_SCP:-scp -q -o BatchMode=yes}"
remote_bin="${BEDSIGHT_REMOTE_BIN:-bedsight}"

# on_box ARGS...: runs `bedsight ARGS` on the box (here for --target, over ssh for --host),
# adding the box's state folder.
on_box() {
    if [ -n "$target" ]; then
        "$bedsight" "$@" --state-dir "$target"
    else
        local command
        command="$(printf '%q ' "$remote_bin" "$@")"
        if [ -n "${BEDSIGHT_REMOTE_STATE_DIR:-}" ]; then
            command+="$(printf -- '--state-dir %q' "$BEDSIGHT_REMOTE_STATE_DIR")"
        fi
        "${ssh_cmd[@]}" "$host" "$command"
    fi
}

# active_sha256: the manifest sha256 of the box's active, self-tested image ("" when none).
active_sha256() {
    on_box image list | sed -n 's/^slot [ab]  *active  *.*self-test passed .*manifest-sha256 \([0-9a-f]\{64\}\)$/\1/p'
}

box="${target:-$host}"

# 1. Verify here.
if [ -z "$trusted_keys" ] && [ -n "$target" ] && [ -d "$target/trusted-keys" ]; then
    trusted_keys="$target/trusted-keys"
fi
step "1/4 verifying $image here${trusted_keys:+ (signature against $trusted_keys)}"
verify_args=(image verify "$image")
[ -z "$trusted_keys" ] || verify_args+=(--trusted-keys "$trusted_keys")
"$bedsight" "${verify_args[@]}" || fail 3 "$image did not verify; the box ($box) was not touched"
new_sha="$("$bedsight" image info "$image" | sed -n 's/^manifest  *sha256 \([0-9a-f]\{64\}\)$/\1/p')"
[ -n "$new_sha" ] || fail 3 "cannot read the manifest sha256 of $image; the box was not touched"
model="$("$bedsight" image info "$image" | sed -n 's/^name  *//p')"
step "  $model, manifest sha256 $new_sha"

# 2. Copy.
if [ -n "$target" ]; then
    incoming="$target/incoming/$(basename "$image")"
    step "2/4 copying to $incoming"
    { mkdir -p "$target/incoming" && cp "$image" "$incoming.part" && sync "$incoming.part" &&
        mv -f "$incoming.part" "$incoming"; } ||
        { rm -f "$incoming.part"; fail 4 "copy to $target/incoming failed; the box's model was not touched"; }
else
    incoming="/tmp/bedsight-flash-$$-$(basename "$image")"
    step "2/4 copying to $host:$incoming"
    "${scp_cmd[@]}" "$image" "$host:$incoming" ||
        fail 4 "copy to $host failed; the box's model was not touched"
fi
cleanup_copy() {
    if [ -n "$target" ]; then
        rm -f "$incoming"
    else
        "${ssh_cmd[@]}" "$host" "rm -f $(printf '%q' "$incoming")" || true
    fi
}

old_sha="$(active_sha256 || true)"

# 3. Install: verify against the box's keys, unpack into the idle slot, self-test, activate.
step "3/4 installing on $box (verify, unpack into the idle slot, self-test, activate)"
install_args=(image install "$incoming")
[ -z "$config" ] || install_args+=(--config "$config")
if ! on_box "${install_args[@]}"; then
    cleanup_copy
    now_sha="$(active_sha256 || true)"
    if [ "$now_sha" = "$old_sha" ]; then
        fail 5 "$box refused $image; its active model is unchanged${old_sha:+ (manifest sha256 $old_sha)}"
    fi
    step "the active model changed although install failed; rolling back"
    on_box image rollback || fail 7 "install failed and rollback failed on $box: it needs a person"
    fail 6 "install failed on $box; rolled back"
fi
cleanup_copy

# 4. Health check.
step "4/4 health check: $box must report $new_sha active and self-tested"
if on_box image list && [ "$(active_sha256 || true)" = "$new_sha" ]; then
    step "done: $model is active on $box"
    exit 0
fi
echo "flash: the health check failed: $box does not report $new_sha active and self-tested" >&2
step "5 rolling back on $box"
if on_box image rollback && [ "$(active_sha256 || true)" = "$old_sha" ] && [ -n "$old_sha" ]; then
    fail 6 "health check failed; $box is back on the previous model (manifest sha256 $old_sha)"
fi
fail 7 "health check failed and the rollback did not restore the previous model on $box: it needs a person"
