#!/usr/bin/env bash
# Runs the whole test suite: builds the wasm32-wasip2 guest plugins, then `cargo test`
# for the native workspace (unit tests, runtime tests, simulator conformance, end-to-end).
#
# The AMQP tests need a RabbitMQ broker. If STASIS_TEST_AMQP_URL is set, that broker is used
# (and left alone). Otherwise this starts the private test node (scripts/rabbitmq.sh: installs
# Debian's rabbitmq-server if needed, 127.0.0.1:5673, amqps on 5674), exports
# STASIS_TEST_AMQP_URL, STASIS_TEST_AMQPS_URL, STASIS_TEST_AMQPS_CA and
# STASIS_TEST_RABBITMQ_NODE for the tests, and stops the node on exit if it started it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${STASIS_TEST_AMQP_URL:-}" ]; then
    if bash scripts/rabbitmq.sh status >/dev/null 2>&1; then
        echo "rabbitmq: using the test node that is already running (not stopping it)"
        # (Restarts it if an older scripts/rabbitmq.sh started it without a TLS listener.)
        bash scripts/rabbitmq.sh start
    else
        trap 'bash scripts/rabbitmq.sh stop || true' EXIT
        bash scripts/rabbitmq.sh start
    fi
    eval "$(bash scripts/rabbitmq.sh env)"
else
    echo "rabbitmq: using STASIS_TEST_AMQP_URL=${STASIS_TEST_AMQP_URL%%://*}://…@${STASIS_TEST_AMQP_URL##*@}"
fi
export STASIS_TEST_AMQP_URL
export STASIS_TEST_RABBITMQ_NODE="${STASIS_TEST_RABBITMQ_NODE:-}"
# The amqps test needs the broker's TLS listener and the CA that signed its certificate (the
# private node has both); with your own broker, set them too.
export STASIS_TEST_AMQPS_URL="${STASIS_TEST_AMQPS_URL:-}"
export STASIS_TEST_AMQPS_CA="${STASIS_TEST_AMQPS_CA:-}"

bash plugins/build.sh
cargo test "$@"
