#!/usr/bin/env bash
# Make this machine ready for the demo and the tests: Debian packages, RabbitMQ,
# PostgreSQL, MariaDB, a root libvirtd without systemd, and the project's venv.
# Idempotent: every step checks first and changes only what is missing.
#
# Usage: tools/bootstrap.sh [--no-venv]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STAMP="$VENV/.bootstrap-stamp"
LOG_DIR=/var/log/lifecycle-bootstrap

PACKAGES=(
    python3 python3-venv python3-dev gcc pkg-config libvirt-dev libsystemd-dev
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
    rabbitmq-server postgresql mariadb-server procps iproute2 faketime nbdkit
)

QEMU_CONF='user = "root"
group = "root"
cgroup_controllers = [ ]
namespaces = [ ]'

say() { echo "bootstrap: $*"; }
die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }

# wait_for SECONDS COMMAND...: retry COMMAND until it succeeds or time is up.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Daemons inherit our stdout/stderr; a caller piping us (tools/test | tee) would
# then never see EOF, so their output goes to a log file instead.
run_logged() {
    local name=$1
    shift
    mkdir -p "$LOG_DIR"
    "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1
}

# --- Debian packages ---------------------------------------------------------

missing_packages() {
    local installed
    installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null \
        | awk '/ install ok installed$/ {print $1}' || true)
    local p
    for p in "${PACKAGES[@]}"; do
        grep -qx "$p" <<<"$installed" || echo "$p"
    done
}

POLICY_RC=/usr/sbin/policy-rc.d
CREATED_POLICY_RC=

remove_policy_rc() {
    [[ -z $CREATED_POLICY_RC ]] || rm -f "$POLICY_RC"
}

# Without systemd, postinst scripts that start services fail and abort the install;
# exit 101 tells invoke-rc.d not to start anything. We start services ourselves.
install_policy_rc() {
    [[ -e $POLICY_RC ]] && return
    printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
    chmod 755 "$POLICY_RC"
    CREATED_POLICY_RC=1
    trap remove_policy_rc EXIT
}

ensure_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} == 0)); then
        say "Debian packages: all present"
        return
    fi
    say "installing Debian packages: ${missing[*]}"
    install_policy_rc
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}"
    remove_policy_rc
    CREATED_POLICY_RC=
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]} == 0)) || die "still not installed after apt-get: ${missing[*]}"
}

# --- RabbitMQ, PostgreSQL, MariaDB -------------------------------------------

# ensure_listening NAME PORT LOGHINT COMMAND...: start NAME unless PORT answers.
ensure_listening() {
    local name=$1 port=$2 loghint=$3
    shift 3
    if port_open "$port"; then
        say "$name: answering on 127.0.0.1:$port"
        return
    fi
    say "$name: starting"
    run_logged "$name" "$@" || die "$name: start command failed (see $LOG_DIR/$name.log)"
    wait_for 60 port_open "$port" \
        || die "$name: not answering on 127.0.0.1:$port after 60 s (see $loghint and $LOG_DIR/$name.log)"
    say "$name: answering on 127.0.0.1:$port"
}

pg_version() {
    local v
    v=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
    [[ -n $v ]] || die "postgresql: no cluster under /etc/postgresql"
    echo "$v"
}

start_mariadb() {
    # A fresh install never started the server, so its socket directory may be missing.
    install -d -o mysql -g mysql -m 755 /run/mysqld
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
}

ensure_services() {
    ensure_listening rabbitmq 5672 /var/log/rabbitmq/ rabbitmq-server -detached
    ensure_listening postgresql 5432 /var/log/postgresql/ \
        pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main start
    ensure_listening mariadb 3306 "mariadbd's error log" start_mariadb
}

# --- Database access as DESIGN.md assumes it ---------------------------------

pg_trusts_loopback() {
    PGPASSFILE=/nonexistent PGPASSWORD='' PGCONNECT_TIMEOUT=5 \
        psql -w -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' </dev/null >/dev/null 2>&1
}

ensure_pg_access() {
    if pg_trusts_loopback; then
        say "postgresql: postgres@127.0.0.1 without password works"
        return
    fi
    local v hba
    v=$(pg_version)
    hba=/etc/postgresql/$v/main/pg_hba.conf
    say "postgresql: adding 'host all all 127.0.0.1/32 trust' to $hba"
    # pg_hba.conf is first-match: the line must come before any md5/scram line.
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$v" main reload
    wait_for 10 pg_trusts_loopback \
        || die "postgresql: still asks postgres@127.0.0.1 for a password after editing $hba"
}

mariadb_tcp_root() {
    mariadb --no-defaults --connect-timeout=5 -h 127.0.0.1 -P 3306 -u root "$@" </dev/null
}

ensure_mariadb_access() {
    if mariadb_tcp_root -e 'select 1' >/dev/null 2>&1; then
        say "mariadb: root@127.0.0.1 with empty password works"
        return
    fi
    say "mariadb: giving root an empty password over TCP"
    # With name resolution on, 127.0.0.1 matches root@localhost; with
    # skip-name-resolve it matches only root@'127.0.0.1'. Make both work.
    # Over the socket, root gets in through unix_socket as the OS root user.
    mariadb --no-defaults -u root --protocol=socket <<'SQL' \
        || die "mariadb: cannot log in as root over the local socket to fix access"
ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
CREATE USER IF NOT EXISTS root@'127.0.0.1';
ALTER USER root@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
GRANT ALL PRIVILEGES ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
    local who
    who=$(mariadb_tcp_root -N -e 'select current_user()' 2>&1) \
        || die "mariadb: root@127.0.0.1 with empty password still refused: $who"
    say "mariadb: TCP login from 127.0.0.1 now matches $who"
}

# --- libvirtd ---------------------------------------------------------------

ensure_libvirt_accounts() {
    getent group kvm >/dev/null || { say "libvirt: creating group kvm"; groupadd --system kvm; }
    getent group libvirt-qemu >/dev/null \
        || { say "libvirt: creating group libvirt-qemu"; groupadd --system libvirt-qemu; }
    if ! getent passwd libvirt-qemu >/dev/null; then
        # libvirtd resolves this user before it reads qemu.conf, even though
        # qemu.conf below makes it run guests as root.
        say "libvirt: creating system user libvirt-qemu"
        useradd --system --gid libvirt-qemu --groups kvm --home-dir /var/lib/libvirt \
            --no-create-home --shell /usr/sbin/nologin libvirt-qemu
    fi
    mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt
}

QEMU_CONF_CHANGED=

ensure_qemu_conf() {
    local conf=/etc/libvirt/qemu.conf
    if [[ -f $conf ]] && [[ "$(cat "$conf")" == "$QEMU_CONF" ]]; then
        return
    fi
    say "libvirt: writing $conf (guests as root, no cgroups, no namespaces)"
    mkdir -p /etc/libvirt
    printf '%s\n' "$QEMU_CONF" >"$conf"
    QEMU_CONF_CHANGED=1
}

# PID 1 here is slow to reap orphans, so a daemon that just exited lingers as a
# zombie that pgrep would still report as running.
live_pids() {
    { ps -o pid=,stat= -C "$1" || true; } | awk '$2 !~ /^Z/ {print $1}'
}

no_live_pids() {
    [[ -z "$(live_pids "$1")" ]]
}

stop_libvirtd() {
    local pids
    mapfile -t pids < <(live_pids libvirtd)
    ((${#pids[@]} > 0)) || return 0
    say "libvirt: restarting libvirtd (pid ${pids[*]}) to read the new qemu.conf"
    kill "${pids[@]}"
    wait_for 20 no_live_pids libvirtd \
        || die "libvirt: libvirtd (pid ${pids[*]}) did not exit after SIGTERM"
}

ensure_daemon() {
    local name=$1
    if [[ -n "$(live_pids "$name")" ]]; then
        return
    fi
    say "libvirt: starting $name"
    run_logged "$name" "$name" -d || die "libvirt: '$name -d' failed (see $LOG_DIR/$name.log)"
}

virsh_answers() {
    timeout 10 virsh -q -c "$1" list >/dev/null 2>&1
}

ensure_libvirtd() {
    ensure_libvirt_accounts
    ensure_qemu_conf
    [[ -z $QEMU_CONF_CHANGED ]] || stop_libvirtd
    ensure_daemon virtlogd
    ensure_daemon libvirtd
    local uri
    for uri in test+unix:///default qemu:///system; do
        if ! wait_for 30 virsh_answers "$uri"; then
            timeout 10 virsh -c "$uri" list >&2 || true
            die "libvirt: 'virsh -c $uri list' still fails after 30 s (see /var/log/libvirt/ and $LOG_DIR/libvirtd.log)"
        fi
    done
    say "libvirt: libvirtd answers on test+unix:///default and qemu:///system"
}

# --- Python virtual environment ---------------------------------------------

# The editable install maps only the top-level packages that had an __init__.py
# when it ran, so a package created later needs a reinstall to be importable.
requirements_hash() {
    (
        cat "$REPO/setup.cfg" "$REPO/setup.py"
        cd "$REPO"
        ls -d -- */__init__.py 2>/dev/null || true
    ) | sha256sum | cut -d' ' -f1
}

ensure_venv() {
    if ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        say "venv: creating $VENV with $(command -v python3)"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    local want
    want=$(requirements_hash)
    if [[ -f $STAMP ]] && [[ "$(cat "$STAMP")" == "$want" ]]; then
        say "venv: up to date"
        return
    fi
    say "venv: pip install -e '${REPO}[test]' (libvirt-python compiles the first time)"
    "$VENV/bin/python" -m pip install -q -e "${REPO}[test]" \
        || die "venv: pip install -e failed (the venv is left as is; the next run retries)"
    echo "$want" >"$STAMP"
    say "venv: installed"
}

# --- main -------------------------------------------------------------------

main() {
    local with_venv=1 arg
    for arg in "$@"; do
        case $arg in
            --no-venv) with_venv= ;;
            -h | --help) sed -n '2,6p' "${BASH_SOURCE[0]}"; exit 0 ;;
            *) die "unknown argument '$arg' (usage: tools/bootstrap.sh [--no-venv])" ;;
        esac
    done
    ((EUID == 0)) || die "must run as root (it installs packages and starts system daemons)"

    ensure_packages
    ensure_services
    ensure_pg_access
    ensure_mariadb_access
    ensure_libvirtd
    [[ -z $with_venv ]] || ensure_venv
    say "ready"
}

main "$@"
