#!/bin/sh
# Install truckgw as a systemd service on Raspberry Pi OS / Debian. Idempotent: run it
# again to upgrade the package; an existing config is never overwritten.
#
#   sudo MQTT_HOST=broker.example.com TRUCK_ID=TRK-0001 systemd/install.sh
#   sudo systemd/install.sh --uninstall          # keeps config and buffer
#   sudo PURGE=1 systemd/install.sh --uninstall  # also removes them and the user
#
# Settings (environment):
#   TRUCK_ID     truck id for a new config (default: the host name)
#   MQTT_HOST    broker host for a new config (required when no config exists yet)
#   MQTT_PORT    broker port for a new config (default 8883)
#   GPS_PORT     serial port of the GPS for a new config (default /dev/ttyACM0)
#   CAN_CHANNEL  socketcan interface for a new config (default can0)
#   SRC          what pip installs (default: the checkout this script lives in)
#   PYTHON       interpreter for the virtualenv (default python3, needs >= 3.11)
#   PIP_ARGS     extra pip arguments (e.g. --no-index --find-links=/media/wheels)
#   ROOT         install into this directory instead of / (image building, tests);
#                then the unit is enabled offline and not started unless START=1
#   PREFIX       where the venv and docs go (default /opt/truckgw)
#   START        1: (re)start the unit after installing (default 1 unless ROOT is set)
#   SYSTEMCTL    the systemctl command (default systemctl)
set -eu

SERVICE_USER=truckgw
UNIT=truckgw.service
ROOT=${ROOT:-}
PREFIX=${PREFIX:-/opt/truckgw}
PYTHON=${PYTHON:-python3}
PIP_ARGS=${PIP_ARGS:-}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=${SRC:-$(dirname "$HERE")}
CONF_DIR=/etc/truckgw
CONF=$CONF_DIR/truckgw.toml
STATE_DIR=/var/lib/truckgw
UNIT_DIR=/etc/systemd/system
if [ -n "$ROOT" ]; then START=${START:-0}; else START=${START:-1}; fi

say() { printf 'truckgw-install: %s\n' "$*"; }
die() { printf 'truckgw-install: error: %s\n' "$*" >&2; exit 1; }

# systemctl acting on $ROOT when installing into another tree
sysctl() {
    if [ -n "$ROOT" ]; then $SYSTEMCTL --root="$ROOT" "$@"; else $SYSTEMCTL "$@"; fi
}

user_exists() { grep -q "^$SERVICE_USER:" "$ROOT/etc/passwd" 2>/dev/null; }
group_id() { awk -F: -v g="$1" '$1 == g { print $3 }' "$ROOT/etc/group"; }

install_unit() {  # $1: unit file name; the venv path follows $PREFIX
    sed "s#/opt/truckgw#$PREFIX#g" "$HERE/$1" > "$ROOT$UNIT_DIR/.$1.new"
    chmod 0644 "$ROOT$UNIT_DIR/.$1.new"
    mv -f "$ROOT$UNIT_DIR/.$1.new" "$ROOT$UNIT_DIR/$1"
}

do_install() {
    [ "$(id -u)" = 0 ] || [ -n "$ROOT" ] || die "run as root (sudo)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than 3.11"
    # refuse before changing anything when a first install lacks the broker
    if [ ! -f "$ROOT$CONF" ] && [ -z "${MQTT_HOST:-}" ]; then
        die "no $CONF yet: set MQTT_HOST (and TRUCK_ID)"
    fi

    # 1. a system user with no login and no home of its own
    if user_exists; then
        say "user $SERVICE_USER exists"
    else
        if [ -n "$ROOT" ]; then set -- --prefix "$ROOT"; else set --; fi
        useradd "$@" --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "truckgw gateway" "$SERVICE_USER"
        say "created user $SERVICE_USER"
    fi
    gid=$(group_id "$SERVICE_USER")
    [ -n "$gid" ] || die "group $SERVICE_USER not found in $ROOT/etc/group"

    # 2. the virtualenv and the package (reinstalled on every run: that is the upgrade)
    venv=$ROOT$PREFIX/venv
    if [ ! -x "$venv/bin/python" ]; then
        mkdir -p "$ROOT$PREFIX"
        "$PYTHON" -m venv "$venv"
        say "created virtualenv $PREFIX/venv"
    fi
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS "$SRC"
    say "installed $("$venv/bin/truckgw" --version)"
    mkdir -p "$ROOT$PREFIX/share/doc"
    for doc in "$SRC/docs/operations.md" "$SRC/docs/raspberry-pi.md" "$SRC/config/example.toml"; do
        [ -f "$doc" ] && cp -f "$doc" "$ROOT$PREFIX/share/doc/"
    done

    # 3. the config: placed from the template only when absent
    mkdir -p "$ROOT$CONF_DIR"
    chown "0:$gid" "$ROOT$CONF_DIR"
    chmod 0750 "$ROOT$CONF_DIR"
    if [ -f "$ROOT$CONF" ]; then
        say "keeping existing $CONF"
    else
        truck=${TRUCK_ID:-$(hostname -s 2>/dev/null || hostname)}
        sed -e "s#@TRUCK_ID@#$truck#g" -e "s#@MQTT_HOST@#$MQTT_HOST#g" \
            -e "s#@MQTT_PORT@#${MQTT_PORT:-8883}#g" -e "s#@GPS_PORT@#${GPS_PORT:-/dev/ttyACM0}#g" \
            -e "s#@CAN_CHANNEL@#${CAN_CHANNEL:-can0}#g" -e "s#@STATE_DIR@#$STATE_DIR#g" \
            "$HERE/truckgw.toml.in" > "$ROOT$CONF.new"
        chown "0:$gid" "$ROOT$CONF.new"
        chmod 0640 "$ROOT$CONF.new"
        mv -f "$ROOT$CONF.new" "$ROOT$CONF"
        say "placed $CONF for truck $truck (edit it, then: systemctl restart truckgw)"
    fi
    "$venv/bin/truckgw" check-config -q "$ROOT$CONF" || die "$CONF is invalid (see above)"

    # 4. the units, enabled; started (or restarted onto the new version)
    mkdir -p "$ROOT$UNIT_DIR"
    install_unit truckgw.service
    install_unit truckgw@.service
    if [ -z "$ROOT" ]; then sysctl daemon-reload; fi
    sysctl enable "$UNIT"
    if [ "$START" = 1 ]; then
        sysctl restart "$UNIT"
        say "started $UNIT; check with: truckgw status -c $CONF"
    else
        say "enabled $UNIT (not started)"
    fi
}

do_uninstall() {
    [ "$(id -u)" = 0 ] || [ -n "$ROOT" ] || die "run as root (sudo)"
    for unit in "$ROOT$UNIT_DIR"/truckgw.service "$ROOT$UNIT_DIR"/truckgw@*.service; do
        [ -e "$unit" ] || continue
        name=$(basename "$unit")
        if [ -z "$ROOT" ]; then sysctl stop "$name" 2>/dev/null || true; fi
        sysctl disable "$name" 2>/dev/null || true
        rm -f "$unit"
        say "removed $name"
    done
    if [ -z "$ROOT" ]; then sysctl daemon-reload; fi
    rm -rf "${ROOT:?}${PREFIX:?}"
    say "removed $PREFIX"
    if [ "${PURGE:-0}" = 1 ]; then
        rm -rf "${ROOT}${CONF_DIR:?}" "${ROOT}${STATE_DIR:?}"
        if user_exists; then
            if [ -n "$ROOT" ]; then set -- --prefix "$ROOT"; else set --; fi
            userdel "$@" "$SERVICE_USER"
        fi
        say "purged $CONF_DIR, $STATE_DIR and user $SERVICE_USER"
    else
        say "kept $CONF_DIR and $STATE_DIR (PURGE=1 removes them)"
    fi
}

case "${1:-}" in
    ""|--install) do_install ;;
    --uninstall) do_uninstall ;;
    *) die "usage: $0 [--install|--uninstall]" ;;
esac
