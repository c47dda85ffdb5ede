#!/bin/sh
# Install or upgrade truckgw as a systemd service on Raspberry Pi OS / Debian.
#
#   sudo MQTT_HOST=broker.example.com TRUCK_ID=TRK-0001 MQTT_CA=ca.pem systemd/install.sh
#   sudo systemd/install.sh                              # upgrade: the config is kept
#   sudo systemd/install.sh --wheelhouse /media/wheels   # offline (deploy/wheelhouse.sh)
#   sudo systemd/install.sh --uninstall                  # keeps config and buffer
#   sudo systemd/install.sh --uninstall --purge          # also config, buffer and the user
#
# Each run installs the package into a new virtualenv /opt/truckgw/venvs/<version>-<time>,
# checks the config with it as the service user, then points /opt/truckgw/current at it
# and restarts the unit. A config the new version rejects leaves the running version
# untouched; a unit that does not come up on the new version is switched back to the
# previous one. The buffer (/var/lib/truckgw) is never touched by an install or upgrade.
#
# Settings (environment):
#   TRUCK_ID     truck id for a new config (default: the host name)
#   MQTT_HOST    broker host for a new config (required when no config exists yet)
#   MQTT_PORT    broker port for a new config (default 8883, TLS)
#   MQTT_CA      CA certificate to install as /etc/truckgw/ca.pem (private CA)
#   MQTT_CERT, MQTT_KEY
#                client certificate and key for mutual TLS (client.pem, client.key)
#   GPS_PORT     serial port of the GPS for a new config (default /dev/ttyACM0)
#   CAN_CHANNEL  socketcan interface for a new config (default can0)
#   SRC          what pip installs (default: the checkout this script lives in)
#   PYTHON       interpreter for the virtualenv (default python3, needs >= 3.11)
#   PIP_ARGS     extra pip arguments
#   EXTRAS       optional extras to install, e.g. "dbc" (cantools, for [can].dbc_file);
#                default: "dbc" when the existing config sets dbc_file, else none
#   ROOT         install into this directory instead of / (image building, tests);
#                then the unit is enabled offline and not started unless START=1
#   PREFIX       where the venvs and docs go (default /opt/truckgw)
#   BINDIR       where the truckgw command is linked (default /usr/local/bin)
#   START        1: (re)start the unit after installing (default 1 unless ROOT is set)
#   KEEP_VENVS   how many venvs to keep, the current one included (default 2, min 2)
#   SYSTEMCTL    the systemctl command (default systemctl)
#   PURGE=1      same as --purge
#   REMOTE_CONFIG
#                1: let the fleet push configs (docs/remote.md): a new config gets
#                [remote] enabled = true, /etc/truckgw and truckgw.toml become writable by
#                group truckgw (0770/0660) and a unit drop-in adds ReadWritePaths=; 0: undo
#                that (the config file itself is not edited); unset: leave it as it is
set -eu

SERVICE_USER=truckgw
UNIT=truckgw.service
ROOT=${ROOT:-}
PREFIX=${PREFIX:-/opt/truckgw}
BINDIR=${BINDIR:-/usr/local/bin}
PYTHON=${PYTHON:-python3}
PIP_ARGS=${PIP_ARGS:-}
EXTRAS=${EXTRAS:-}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
KEEP_VENVS=${KEEP_VENVS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=${SRC:-$(dirname "$HERE")}
CONF_DIR=/etc/truckgw
CONF=$CONF_DIR/truckgw.toml
STATE_DIR=/var/lib/truckgw
UNIT_DIR=/etc/systemd/system
WHEELHOUSE=""
PURGE=${PURGE:-0}
if [ -n "$ROOT" ]; then START=${START:-0}; else START=${START:-1}; fi
[ "$KEEP_VENVS" -ge 2 ] 2>/dev/null || KEEP_VENVS=2

say() { printf 'truckgw-install: %s\n' "$*"; }
die() { printf 'truckgw-install: error: %s\n' "$*" >&2; exit 1; }
case "${REMOTE_CONFIG:-}" in ""|0|1) ;; *) die "REMOTE_CONFIG must be 1 or 0" ;; esac

# systemctl acting on $ROOT when installing into another tree
sysctl() {
    if [ -n "$ROOT" ]; then $SYSTEMCTL --root="$ROOT" "$@"; else $SYSTEMCTL "$@"; fi
}

user_exists() { grep -q "^$SERVICE_USER:" "$ROOT/etc/passwd" 2>/dev/null; }
user_id() { awk -F: -v u="$1" '$1 == u { print $3 }' "$ROOT/etc/passwd"; }
group_id() { awk -F: -v g="$1" '$1 == g { print $3 }' "$ROOT/etc/group"; }

# run a command as the service user (numeric ids: works for a user that exists in $ROOT
# only); only its own group, like the unit minus SupplementaryGroups=dialout
as_service_user() {
    # from /: the caller's folder (a 0700 home) is nothing the service user may enter
    (cd / && setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@")
}

install_unit() {  # $1: unit file name; the venv path follows $PREFIX
    sed "s#/opt/truckgw#$PREFIX#g" "$HERE/$1" > "$ROOT$UNIT_DIR/.$1.new"
    chmod 0644 "$ROOT$UNIT_DIR/.$1.new"
    mv -f "$ROOT$UNIT_DIR/.$1.new" "$ROOT$UNIT_DIR/$1"
}

# point $PREFIX/current at venvs/$1 atomically (rename over the old link)
switch_current() {
    ln -sfn "venvs/$1" "$ROOT$PREFIX/.current.new"
    mv -Tf "$ROOT$PREFIX/.current.new" "$ROOT$PREFIX/current"
}

current_stamp() {
    if [ -L "$ROOT$PREFIX/current" ]; then basename "$(readlink "$ROOT$PREFIX/current")"; fi
}

# a file placed for the service, replaced atomically: $1 source, $2 name under $CONF_DIR,
# $3 owner uid, $4 mode, $5 what the message calls the owner
place() {
    [ -f "$1" ] || die "$1 not found"
    cp -f "$1" "$ROOT$CONF_DIR/.$2.new"
    chown "$3:$gid" "$ROOT$CONF_DIR/.$2.new"
    chmod "$4" "$ROOT$CONF_DIR/.$2.new"
    mv -f "$ROOT$CONF_DIR/.$2.new" "$ROOT$CONF_DIR/$2"
    say "placed $CONF_DIR/$2 ($4 $5)"
}

# a certificate: 0640 root:truckgw (not secret; the group reads it)
place_file() { place "$1" "$2" 0 0640 "root:$SERVICE_USER"; }

# a secret (private key, password): the service user's alone, 0600 truckgw:truckgw (the
# one rule): group truckgw is also how administrators read the status, never a secret
place_secret() { place "$1" "$2" "$uid" 0600 "$SERVICE_USER"; }

# secrets of an earlier install (0640 root:truckgw, the rule before) are made the service
# user's alone, so that a status reader in group truckgw cannot read them
tighten_secrets() {
    for name in client.key mqtt.password remote.key; do
        f=$ROOT$CONF_DIR/$name
        if [ -f "$f" ] && [ ! -L "$f" ]; then
            chown "$uid:$gid" "$f"
            chmod 0600 "$f"
        fi
    done
}

version_of_source() {
    if [ -n "$WHEELHOUSE" ]; then
        # shellcheck disable=SC2012  # names of our own wheels, no odd characters
        ls "$WHEELHOUSE"/truckgw-*.whl 2>/dev/null | sed -n 's#.*/truckgw-\([^-]*\)-.*#\1#p' \
            | sort -V | tail -n 1
    elif [ -f "$SRC/pyproject.toml" ]; then
        sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml" | head -n 1
    fi
}

prune_venvs() {  # keep the newest $KEEP_VENVS, never the current one
    keep=$(current_stamp)
    # shellcheck disable=SC2012  # stamps are <version>-<UTC time>: no odd characters
    ls -1t "$ROOT$PREFIX/venvs" | tail -n +"$((KEEP_VENVS + 1))" | while read -r old; do
        [ "$old" = "$keep" ] && continue
        rm -rf "${ROOT}${PREFIX:?}/venvs/${old:?}"
        say "removed old virtualenv venvs/$old"
    done
}

do_install() {
    [ "$(id -u)" = 0 ] || die "run as root (sudo)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than 3.11"
    command -v setpriv >/dev/null || die "setpriv not found (Debian package util-linux)"
    # refuse before changing anything when a first install lacks the broker
    if [ ! -f "$ROOT$CONF" ] && [ -z "${MQTT_HOST:-}" ]; then
        die "no $CONF yet: set MQTT_HOST (and TRUCK_ID)"
    fi
    if [ -n "$WHEELHOUSE" ]; then
        [ -n "$(version_of_source)" ] || die "no truckgw-*.whl in $WHEELHOUSE (deploy/wheelhouse.sh)"
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
    uid=$(user_id "$SERVICE_USER")
    gid=$(group_id "$SERVICE_USER")
    [ -n "$uid" ] && [ -n "$gid" ] || die "user/group $SERVICE_USER not found in $ROOT/etc"

    # 2. a new virtualenv for this version; the running one is not touched yet
    version=$(version_of_source)
    stamp="${version:-unknown}-$(date -u +%Y%m%dT%H%M%SZ)"
    n=1
    while [ -e "$ROOT$PREFIX/venvs/$stamp" ]; do  # two installs within one second
        n=$((n + 1))
        [ "$n" -le 100 ] || die "cannot find a free name under $PREFIX/venvs"
        stamp="${version:-unknown}-$(date -u +%Y%m%dT%H%M%SZ)-$n"
    done
    venv_rel=venvs/$stamp
    venv=$ROOT$PREFIX/$venv_rel
    mkdir -p "$ROOT$PREFIX/venvs"
    chmod 0755 "$ROOT$PREFIX" "$ROOT$PREFIX/venvs"
    "$PYTHON" -m venv "$venv"
    # a failed pip install leaves no half venv behind
    trap 'rm -rf "$venv"' EXIT
    # a truck whose config decodes OEM signals from a DBC file needs cantools in every
    # new version too, or the new venv fails its check-config and the upgrade is refused
    if [ -z "$EXTRAS" ] && [ -f "$ROOT$CONF" ] && \
            grep -Eq '^[[:space:]]*dbc_file[[:space:]]*=' "$ROOT$CONF"; then
        EXTRAS=dbc
        say "$CONF sets dbc_file: installing the dbc extra (cantools)"
    fi
    spec_extras=""
    if [ -n "$EXTRAS" ]; then spec_extras="[$EXTRAS]"; fi
    if [ -n "$WHEELHOUSE" ]; then
        # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
            --find-links "$WHEELHOUSE" $PIP_ARGS "truckgw$spec_extras"
    else
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS \
            "$SRC$spec_extras"
    fi
    say "installed $("$venv/bin/truckgw" --version) into $PREFIX/$venv_rel"
    mkdir -p "$ROOT$PREFIX/share/doc"
    for doc in "$SRC/docs/operations.md" "$SRC/docs/raspberry-pi.md" "$SRC/config/example.toml"; do
        if [ -f "$doc" ]; then cp -f "$doc" "$ROOT$PREFIX/share/doc/"; fi
    done

    # 3. config, certificates and the state folder; a config is placed only when absent
    mkdir -p "$ROOT$CONF_DIR"
    chown "0:$gid" "$ROOT$CONF_DIR"
    chmod 0750 "$ROOT$CONF_DIR"
    if [ -n "${MQTT_CA:-}" ]; then place_file "$MQTT_CA" ca.pem; fi
    if [ -n "${MQTT_CERT:-}" ] || [ -n "${MQTT_KEY:-}" ]; then
        [ -n "${MQTT_CERT:-}" ] && [ -n "${MQTT_KEY:-}" ] || die "MQTT_CERT and MQTT_KEY go together"
        place_file "$MQTT_CERT" client.pem
        place_secret "$MQTT_KEY" client.key
    fi
    tighten_secrets
    if [ -f "$ROOT$CONF" ]; then
        say "keeping existing $CONF"
    else
        truck=${TRUCK_ID:-$(hostname -s 2>/dev/null || hostname)}
        if [ -n "${MQTT_CA:-}" ]; then ca=""; else ca="# "; fi
        if [ -n "${MQTT_CERT:-}" ]; then cert=""; else cert="# "; fi
        sed -e "s#@TRUCK_ID@#$truck#g" -e "s#@MQTT_HOST@#$MQTT_HOST#g" \
            -e "s#@MQTT_PORT@#${MQTT_PORT:-8883}#g" -e "s#@GPS_PORT@#${GPS_PORT:-/dev/ttyACM0}#g" \
            -e "s#@CAN_CHANNEL@#${CAN_CHANNEL:-can0}#g" -e "s#@STATE_DIR@#$STATE_DIR#g" \
            -e "s%^#@CA@%$ca%" -e "s%^#@CERT@%$cert%" \
            "$HERE/truckgw.toml.in" > "$ROOT$CONF.new"
        if [ "${REMOTE_CONFIG:-}" = 1 ]; then
            printf '\n# remote management from the fleet side (docs/remote.md)\n[remote]\nenabled = true\n' \
                >> "$ROOT$CONF.new"
        fi
        chown "0:$gid" "$ROOT$CONF.new"
        chmod 0640 "$ROOT$CONF.new"
        mv -f "$ROOT$CONF.new" "$ROOT$CONF"
        say "placed $CONF for truck $truck (edit it, then: systemctl restart truckgw)"
    fi
    remote_config
    if [ ! -d "$ROOT$STATE_DIR" ]; then
        mkdir -p "$ROOT$STATE_DIR"
        chown "$uid:$gid" "$ROOT$STATE_DIR"
        chmod 0750 "$ROOT$STATE_DIR"
    fi

    # 4. the new version checks the config as the service user: an unreadable key (a
    # root-only 0600 file) or a key the new version no longer knows fails here, while the
    # running version keeps running
    if ! as_service_user "$venv/bin/truckgw" check-config -q "$ROOT$CONF"; then
        die "$CONF is invalid for $stamp or unreadable by user $SERVICE_USER (see above); still on: $(current_stamp || true)"
    fi

    # 5. units (ExecStart= runs $PREFIX/current/bin/truckgw) and the command on PATH
    mkdir -p "$ROOT$UNIT_DIR" "$ROOT$BINDIR"
    install_unit truckgw.service
    install_unit truckgw@.service
    ln -sfn "$PREFIX/current/bin/truckgw" "$ROOT$BINDIR/truckgw"
    if [ -z "$ROOT" ]; then sysctl daemon-reload; fi
    sysctl enable "$UNIT"

    # 6. switch, restart, and switch back when the new version does not come up
    previous=$(current_stamp)
    switch_current "$stamp"
    trap - EXIT
    say "current -> $venv_rel${previous:+ (was $previous)}"
    if [ "$START" = 1 ]; then
        if sysctl restart "$UNIT" && sysctl is-active --quiet "$UNIT"; then
            say "started $UNIT on $stamp; check with: truckgw status -c $CONF"
        elif [ -n "$previous" ] && [ -d "$ROOT$PREFIX/venvs/$previous" ]; then
            switch_current "$previous"
            sysctl restart "$UNIT" || true
            die "$UNIT failed on $stamp; rolled back to $previous (journalctl -u truckgw)"
        else
            die "$UNIT failed to start on $stamp (journalctl -u truckgw)"
        fi
    else
        say "enabled $UNIT (not started)"
    fi
    # the layout before venvs/: removed only once the new version is in place
    if [ -d "$ROOT$PREFIX/venv" ] && [ ! -L "$ROOT$PREFIX/venv" ]; then
        rm -rf "${ROOT}${PREFIX:?}/venv"
        say "removed the old $PREFIX/venv"
    fi
    prune_venvs
}

# REMOTE_CONFIG=1: the service may replace its own config (a push needing a restart
# writes truckgw.toml, keeps truckgw.toml.prev and its rollback state beside it);
# REMOTE_CONFIG=0: back to a config only root can change
remote_config() {
    dropin="$ROOT$UNIT_DIR/$UNIT.d"
    case "${REMOTE_CONFIG:-}" in
        1)
            chmod 0770 "$ROOT$CONF_DIR"
            chmod 0660 "$ROOT$CONF"
            mkdir -p "$dropin"
            printf '# written by install.sh REMOTE_CONFIG=1 (docs/remote.md)\n[Service]\nReadWritePaths=%s\n' \
                "$CONF_DIR" > "$dropin/remote-config.conf"
            chmod 0644 "$dropin/remote-config.conf"
            say "remote config pushes allowed: $CONF_DIR writable by group $SERVICE_USER"
            ;;
        0)
            chmod 0750 "$ROOT$CONF_DIR"
            chown "0:$gid" "$ROOT$CONF"  # a pushed file belongs to the service user
            chmod 0640 "$ROOT$CONF"
            rm -f "$dropin/remote-config.conf"
            rmdir "$dropin" 2>/dev/null || true
            say "remote config pushes no longer allowed by the unit ($CONF_DIR root-only again)"
            ;;
        *) ;;
    esac
}

do_uninstall() {
    [ "$(id -u)" = 0 ] || die "run as root (sudo)"
    for unit in "$ROOT$UNIT_DIR"/truckgw.service "$ROOT$UNIT_DIR"/truckgw@*.service; do
        [ -e "$unit" ] || continue
        name=$(basename "$unit")
        if [ -z "$ROOT" ]; then sysctl stop "$name" 2>/dev/null || true; fi
        sysctl disable "$name" 2>/dev/null || true
        rm -f "$unit"
        rm -rf "$unit.d"
        say "removed $name"
    done
    if [ -z "$ROOT" ]; then sysctl daemon-reload; fi
    if [ -L "$ROOT$BINDIR/truckgw" ]; then rm -f "$ROOT$BINDIR/truckgw"; fi
    rm -rf "${ROOT}${PREFIX:?}"
    say "removed $PREFIX and $BINDIR/truckgw"
    if [ "$PURGE" = 1 ]; then
        rm -rf "${ROOT}${CONF_DIR:?}" "${ROOT}${STATE_DIR:?}"
        if user_exists; then
            if [ -n "$ROOT" ]; then set -- --prefix "$ROOT"; else set --; fi
            userdel "$@" "$SERVICE_USER"
        fi
        say "purged $CONF_DIR, $STATE_DIR (the buffer) and user $SERVICE_USER"
    else
        say "kept $CONF_DIR and $STATE_DIR with the buffer (--purge removes them)"
    fi
}

ACTION=install
while [ $# -gt 0 ]; do
    case "$1" in
        --install) ACTION=install; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        --wheelhouse)
            [ $# -ge 2 ] || die "--wheelhouse needs a folder"
            [ -d "$2" ] || die "wheelhouse $2 is not a folder"
            WHEELHOUSE=$(cd "$2" && pwd); shift 2 ;;
        *) die "usage: $0 [--install] [--wheelhouse DIR] | --uninstall [--purge]" ;;
    esac
done
if [ "$PURGE" = 1 ] && [ "$ACTION" != uninstall ]; then die "--purge goes with --uninstall"; fi
case "$ACTION" in
    install) do_install ;;
    uninstall) do_uninstall ;;
esac
