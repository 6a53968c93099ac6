#!/usr/bin/env bash
# Install and start a Docker engine on a machine that has none (CI, fresh dev boxes), or stop the
# one this script started. Leaves an engine that was already running alone.
#   scripts/docker-engine.sh start   -> installs docker.io + debootstrap (+ docker-compose) if missing, registers the
#                                       other architecture's emulation (scripts/binfmt.sh: linux/arm64
#                                       images on amd64), starts dockerd
#   scripts/docker-engine.sh stop    -> stops dockerd only if this script started it
set -euo pipefail
PIDFILE=${DOCKERD_PIDFILE:-/tmp/modelport-dockerd.pid}
LOG=${DOCKERD_LOG:-/tmp/modelport-dockerd.log}
DOCKER=/usr/bin/docker

engine_up() { "$DOCKER" info >/dev/null 2>&1; }

case "${1:-}" in
  start)
    if ! command -v dockerd >/dev/null || [ ! -x "$DOCKER" ] || ! command -v debootstrap >/dev/null; then
      echo "docker-engine: installing docker.io and debootstrap (apt)"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq docker.io debootstrap >/dev/null
    fi
    # Compose for docker-compose.yml (`make prepare`, then `docker compose run`): Debian's docker.io
    # client has no compose v2 plugin; bookworm's docker-compose (v1.29) reads the same file.
    if ! "$DOCKER" compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
      echo "docker-engine: installing docker-compose (apt)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }
    fi
    # Not fatal: without it only the other platform's images (PLATFORM=linux/arm64 here) fail, each
    # with binfmt.sh's one line; the host platform's build and run as before.
    "$(dirname "$0")/binfmt.sh" install || echo "docker-engine: continuing without emulation of the other platform" >&2
    if engine_up; then
      echo "docker-engine: an engine is already running; using it"
      exit 0
    fi
    echo "docker-engine: starting dockerd (log: $LOG)"
    nohup dockerd --pidfile "$PIDFILE.dockerd" >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 90); do
      if engine_up; then
        echo "docker-engine: up ($("$DOCKER" version --format '{{.Server.Version}}'))"
        exit 0
      fi
      sleep 1
    done
    echo "docker-engine: dockerd did not come up; last log lines:" >&2
    tail -20 "$LOG" >&2
    exit 1
    ;;
  stop)
    if [ -f "$PIDFILE" ]; then
      pid=$(cat "$PIDFILE")
      echo "docker-engine: stopping dockerd (pid $pid)"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      rm -f "$PIDFILE"
    else
      echo "docker-engine: not started by this script; leaving it alone"
    fi
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
