#!/usr/bin/env bash
# A private RabbitMQ node for the tests (AMQP on 127.0.0.1 only).
#
#   bash scripts/rabbitmq.sh start        # install Debian's rabbitmq-server if missing, start, wait
#   bash scripts/rabbitmq.sh stop         # stop the node (and its private epmd), wait until gone
#   bash scripts/rabbitmq.sh restart      # full stop + start
#   bash scripts/rabbitmq.sh restart-app  # stop_app + start_app: what tests use to simulate a
#                                         # broker restart (every client connection drops; durable
#                                         # exchanges/queues and persistent messages survive)
#   bash scripts/rabbitmq.sh status       # exit 0 if running, 3 if not
#   bash scripts/rabbitmq.sh env          # export lines for STASIS_TEST_AMQP_URL,
#                                         # STASIS_TEST_AMQPS_URL, STASIS_TEST_AMQPS_CA and
#                                         # STASIS_TEST_RABBITMQ_NODE (eval "$(... env)")
#   bash scripts/rabbitmq.sh ctl ARGS...  # rabbitmqctl on the node (right cookie, epmd, name)
#
# Overrides (environment): STASIS_RABBITMQ_PORT (5673), STASIS_RABBITMQ_TLS_PORT (5674),
# STASIS_RABBITMQ_DIST_PORT (25673), STASIS_RABBITMQ_EPMD_PORT (24369), STASIS_RABBITMQ_DIR
# (target/rabbitmq), STASIS_RABBITMQ_START_TIMEOUT (90 s). Set them the same for every call on
# one node (a second node next to the default one needs the first five).
#
# It can also be sourced (`. scripts/rabbitmq.sh`) for the function `stasis_rabbitmq <command>`;
# sourcing changes no shell option and exports nothing. Works from any cwd: everything is
# relative to this file's repository.
#
# The node: name stasis-test@localhost, AMQP port 5673 (STASIS_RABBITMQ_PORT overrides), AMQP
# over TLS (amqps) on 5674 with a certificate for 127.0.0.1 signed by a private CA that this
# script makes with openssl on first start (target/rabbitmq/tls/ca.pem), Erlang
# distribution port 25673 and a private epmd on 24369 (so stopping the node can stop its epmd
# without touching a system RabbitMQ's), all bound to 127.0.0.1. Data, logs, config and the
# Erlang cookie live under target/rabbitmq/ (HOME is set to target/rabbitmq/home for the server
# and for every rabbitmqctl call made here, so the cookie the server creates on its first start
# is the one the CLI uses, whoever runs this — root included). Guest/guest works from loopback,
# which is all the tests need. No plugins (no management UI).
#
# The server is run through /usr/lib/rabbitmq/bin/* directly: Debian's /usr/sbin wrappers `su` to
# the rabbitmq user when run as root, which could not write under target/ nor share the cookie.
#
# Measured on the 2-core dev machine (Debian 12, RabbitMQ 3.10.8, Erlang 25.2): a cold start
# (empty data dir, Erlang cookie created) is ready in 5.3-5.6 s wall clock (the AMQP port opens
# at the end of the boot, then `await_startup` confirms); a warm start about 4.5 s; `stop`
# about 2.5 s; `restart-app` about 1.7 s; `status` about 0.3 s.

_stasis_rmq_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_stasis_rmq_setup() {
    _RMQ_PORT="${STASIS_RABBITMQ_PORT:-5673}"
    _RMQ_TLS_PORT="${STASIS_RABBITMQ_TLS_PORT:-5674}"
    _RMQ_NODE="stasis-test@localhost"
    _RMQ_DIST_PORT="${STASIS_RABBITMQ_DIST_PORT:-25673}"
    _RMQ_EPMD_PORT="${STASIS_RABBITMQ_EPMD_PORT:-24369}"
    _RMQ_BASE="${STASIS_RABBITMQ_DIR:-$_stasis_rmq_root/target/rabbitmq}"
    _RMQ_TIMEOUT="${STASIS_RABBITMQ_START_TIMEOUT:-90}"
    _RMQ_LOG="$_RMQ_BASE/log/$_RMQ_NODE.log"
    _RMQ_PID_FILE="$_RMQ_BASE/$_RMQ_NODE.pid"
    _RMQ_ENV=(
        "HOME=$_RMQ_BASE/home"
        "RABBITMQ_NODENAME=$_RMQ_NODE"
        "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
        "RABBITMQ_NODE_PORT=$_RMQ_PORT"
        "RABBITMQ_DIST_PORT=$_RMQ_DIST_PORT"
        "ERL_EPMD_ADDRESS=127.0.0.1"
        "ERL_EPMD_PORT=$_RMQ_EPMD_PORT"
        "RABBITMQ_CONF_ENV_FILE=$_RMQ_BASE/rabbitmq-env.conf"
        "RABBITMQ_CONFIG_FILE=$_RMQ_BASE/rabbitmq.conf"
        "RABBITMQ_ADVANCED_CONFIG_FILE=$_RMQ_BASE/advanced.config"
        "RABBITMQ_ENABLED_PLUGINS_FILE=$_RMQ_BASE/enabled_plugins"
        "RABBITMQ_MNESIA_BASE=$_RMQ_BASE/mnesia"
        "RABBITMQ_LOG_BASE=$_RMQ_BASE/log"
        "RABBITMQ_PID_FILE=$_RMQ_PID_FILE"
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
        "RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
    )
}

# Path of a RabbitMQ script, bypassing Debian's `su rabbitmq` wrappers in /usr/sbin.
_stasis_rmq_bin() {
    if [ -x "/usr/lib/rabbitmq/bin/$1" ]; then
        echo "/usr/lib/rabbitmq/bin/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        return 1
    fi
}

_stasis_rmq_installed() {
    command -v rabbitmq-server >/dev/null 2>&1 \
        || [ -x /usr/sbin/rabbitmq-server ] \
        || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]
}

_stasis_rmq_install() {
    _stasis_rmq_installed && return 0
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        sudo="sudo"
    fi
    echo "rabbitmq: installing Debian's rabbitmq-server (apt-get)" >&2
    # The package's service is not started on install (policy-rc.d); we run our own node anyway.
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >&2; then
        $sudo apt-get update -q >&2 || true
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >&2 || {
            echo "rabbitmq: apt-get install rabbitmq-server failed" >&2
            return 1
        }
    fi
    _stasis_rmq_installed || {
        echo "rabbitmq: rabbitmq-server still not found after install" >&2
        return 1
    }
}

_stasis_rmq_ctl() {
    local ctl
    ctl="$(_stasis_rmq_bin rabbitmqctl)" || {
        echo "rabbitmq: rabbitmqctl not found" >&2
        return 1
    }
    env "${_RMQ_ENV[@]}" "$ctl" -n "$_RMQ_NODE" "$@"
}

_stasis_rmq_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$_RMQ_PORT") 2>/dev/null
}

_stasis_rmq_pid_alive() {
    local pid
    [ -s "$_RMQ_PID_FILE" ] || return 1
    pid="$(cat "$_RMQ_PID_FILE" 2>/dev/null)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# Running = our pid file names a live process and the node answers a ping.
_stasis_rmq_running() {
    _stasis_rmq_pid_alive || return 1
    _stasis_rmq_ctl -q ping >/dev/null 2>&1
}

_stasis_rmq_log_tail() {
    echo "---- last lines of $_RMQ_LOG ----" >&2
    tail -n 40 "$_RMQ_LOG" 2>/dev/null >&2 || echo "(no log)" >&2
    if [ -s "$_RMQ_BASE/log/startup.log" ]; then
        echo "---- last lines of $_RMQ_BASE/log/startup.log ----" >&2
        tail -n 20 "$_RMQ_BASE/log/startup.log" >&2
    fi
    echo "----" >&2
}

# Wait until the AMQP port accepts connections (the listener opens at the end of the boot).
# $1: pid of the server process to watch (optional), $2: what we are waiting for.
_stasis_rmq_wait_port() {
    local server_pid="$1" what="$2" deadline
    deadline=$((SECONDS + _RMQ_TIMEOUT))
    until _stasis_rmq_port_open; do
        if [ -n "$server_pid" ] && ! kill -0 "$server_pid" 2>/dev/null; then
            echo "rabbitmq: the server exited during $what" >&2
            _stasis_rmq_log_tail
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "rabbitmq: $what timed out after ${_RMQ_TIMEOUT}s (port $_RMQ_PORT not open)" >&2
            _stasis_rmq_log_tail
            return 1
        fi
        sleep 0.2
    done
}

# The TLS listener's files: a private CA and a server certificate for 127.0.0.1 and localhost
# (in subjectAltName, as rustls requires). Made once; kept across starts.
_stasis_rmq_tls_files() {
    local dir="$_RMQ_BASE/tls"
    if [ -s "$dir/ca.pem" ] && [ -s "$dir/server.pem" ] && [ -s "$dir/server.key" ]; then
        return 0
    fi
    command -v openssl >/dev/null 2>&1 || {
        echo "rabbitmq: openssl is needed to make the TLS listener's certificate" >&2
        return 1
    }
    mkdir -p "$dir" || return 1
    (
        cd "$dir" || exit 1
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=stasis-test CA" \
            -keyout ca.key -out ca.pem &&
            openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
                -keyout server.key -out server.csr &&
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext &&
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                -days 3650 -extfile server.ext -out server.pem
    ) >"$dir/openssl.log" 2>&1 || {
        echo "rabbitmq: making the TLS certificate failed:" >&2
        cat "$dir/openssl.log" >&2
        rm -f "$dir/ca.pem" "$dir/server.pem"
        return 1
    }
}

_stasis_rmq_start() {
    _stasis_rmq_install || return 1
    if _stasis_rmq_running; then
        if (exec 3<>"/dev/tcp/127.0.0.1/$_RMQ_TLS_PORT") 2>/dev/null && [ -s "$_RMQ_BASE/tls/ca.pem" ]; then
            echo "rabbitmq: $_RMQ_NODE already running (amqp://127.0.0.1:$_RMQ_PORT)"
            return 0
        fi
        # Started by an older version of this script: no TLS listener yet.
        echo "rabbitmq: $_RMQ_NODE runs without its TLS listener; restarting it"
        _stasis_rmq_stop || return 1
    fi
    if _stasis_rmq_port_open; then
        echo "rabbitmq: port $_RMQ_PORT is already in use by something else" >&2
        return 1
    fi
    local server
    server="$(_stasis_rmq_bin rabbitmq-server)" || {
        echo "rabbitmq: rabbitmq-server not found" >&2
        return 1
    }
    mkdir -p "$_RMQ_BASE/home" "$_RMQ_BASE/mnesia" "$_RMQ_BASE/log" || return 1
    _stasis_rmq_tls_files || return 1
    echo "[]." >"$_RMQ_BASE/enabled_plugins"
    : >"$_RMQ_BASE/rabbitmq-env.conf"
    cat >"$_RMQ_BASE/rabbitmq.conf" <<EOF
# Written by scripts/rabbitmq.sh (a private test node; ports come from the environment).
loopback_users.guest = true
log.file.level = info
log.console = false
# CI disks can be small; the default 50MB limit is fine, keep it explicit.
disk_free_limit.absolute = 50MB
# AMQP over TLS, loopback only; clients are not asked for a certificate.
listeners.ssl.1 = 127.0.0.1:$_RMQ_TLS_PORT
ssl_options.cacertfile = $_RMQ_BASE/tls/ca.pem
ssl_options.certfile = $_RMQ_BASE/tls/server.pem
ssl_options.keyfile = $_RMQ_BASE/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
EOF
    echo "[]." >"$_RMQ_BASE/advanced.config"
    rm -f "$_RMQ_PID_FILE"
    local started=$SECONDS
    echo "rabbitmq: starting $_RMQ_NODE on 127.0.0.1:$_RMQ_PORT (data in $_RMQ_BASE)"
    # Detached: its own session, no terminal, output to a file (it outlives this script).
    (
        cd "$_RMQ_BASE" || exit 1
        exec setsid env "${_RMQ_ENV[@]}" "$server" >>"$_RMQ_BASE/log/startup.log" 2>&1 </dev/null
    ) &
    local pid=$!
    _stasis_rmq_wait_port "$pid" "start" || return 1
    if ! _stasis_rmq_ctl -q await_startup --timeout 30 >/dev/null 2>&1; then
        echo "rabbitmq: the AMQP port is open but rabbitmqctl await_startup failed" >&2
        _stasis_rmq_log_tail
        return 1
    fi
    echo "rabbitmq: ready in $((SECONDS - started)) s"
}

_stasis_rmq_stop() {
    if ! _stasis_rmq_pid_alive; then
        echo "rabbitmq: $_RMQ_NODE is not running"
        _stasis_rmq_kill_epmd
        return 0
    fi
    local pid deadline
    pid="$(cat "$_RMQ_PID_FILE")"
    echo "rabbitmq: stopping $_RMQ_NODE"
    # `stop <pid_file>` also waits for the OS process to end.
    _stasis_rmq_ctl -q stop "$_RMQ_PID_FILE" >/dev/null 2>&1 || true
    deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "rabbitmq: still running after 30 s, killing pid $pid" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$_RMQ_PID_FILE"
    _stasis_rmq_kill_epmd
    echo "rabbitmq: stopped"
}

# Our private epmd (own port) keeps running after the node stops; end it when no node is left.
_stasis_rmq_kill_epmd() {
    local epmd
    epmd="$(command -v epmd 2>/dev/null)" || return 0
    if ERL_EPMD_PORT="$_RMQ_EPMD_PORT" "$epmd" -names 2>/dev/null | grep -q '^name '; then
        return 0
    fi
    ERL_EPMD_PORT="$_RMQ_EPMD_PORT" "$epmd" -kill >/dev/null 2>&1 || true
}

_stasis_rmq_restart_app() {
    if ! _stasis_rmq_running; then
        echo "rabbitmq: $_RMQ_NODE is not running (start it first)" >&2
        return 1
    fi
    echo "rabbitmq: stop_app + start_app on $_RMQ_NODE"
    _stasis_rmq_ctl -q stop_app >/dev/null || {
        echo "rabbitmq: stop_app failed" >&2
        _stasis_rmq_log_tail
        return 1
    }
    _stasis_rmq_ctl -q start_app >/dev/null || {
        echo "rabbitmq: start_app failed" >&2
        _stasis_rmq_log_tail
        return 1
    }
    _stasis_rmq_wait_port "" "start_app"
}

_stasis_rmq_status() {
    if _stasis_rmq_running; then
        echo "rabbitmq: $_RMQ_NODE running (amqp://127.0.0.1:$_RMQ_PORT, pid $(cat "$_RMQ_PID_FILE"))"
        return 0
    fi
    echo "rabbitmq: $_RMQ_NODE not running"
    return 3
}

_stasis_rmq_env() {
    # %q: safe to eval whatever the paths hold.
    printf 'export STASIS_TEST_AMQP_URL=%q\n' "amqp://guest:guest@127.0.0.1:$_RMQ_PORT/%2f"
    printf 'export STASIS_TEST_AMQPS_URL=%q\n' "amqps://guest:guest@127.0.0.1:$_RMQ_TLS_PORT/%2f"
    printf 'export STASIS_TEST_AMQPS_CA=%q\n' "$_RMQ_BASE/tls/ca.pem"
    printf 'export STASIS_TEST_RABBITMQ_NODE=%q\n' "$_RMQ_NODE"
}

# stasis_rabbitmq start|stop|restart|restart-app|status|env|ctl ARGS... (rabbitmqctl on the node)
stasis_rabbitmq() {
    _stasis_rmq_setup
    case "${1:-}" in
        start) _stasis_rmq_start ;;
        stop) _stasis_rmq_stop ;;
        restart) _stasis_rmq_stop && _stasis_rmq_start ;;
        restart-app) _stasis_rmq_restart_app ;;
        status) _stasis_rmq_status ;;
        env) _stasis_rmq_env ;;
        ctl)
            shift
            _stasis_rmq_ctl "$@"
            ;;
        *)
            echo "usage: $0 start|stop|restart|restart-app|status|env|ctl ARGS..." >&2
            return 2
            ;;
    esac
}

# Run as a command (not sourced).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    stasis_rabbitmq "$@"
    exit $?
fi
