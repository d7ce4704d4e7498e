#!/usr/bin/env bash
# Runs "$@" (the tests) touching nothing of the person who runs it:
#   - HOME and the XDG_* dirs point into a new temporary directory, removed afterwards;
#   - a private session bus (dbus-run-session) with a gnome-keyring of its own, unlocked with a test password;
#     both are stopped when "$@" ends. Without dbus-run-session, "$@" runs with no session bus at all.
# The real HOME and XDG dirs go along as CONVOCATIONS_TEST_REAL_*: the tests fail if they changed
# (tests/helpers/isolation.py, which also moves HOME when pytest runs without this wrapper).
set -euo pipefail

if [ "${1-}" = "--on-private-bus" ]; then
  shift
  export CONVOCATIONS_TEST_BUS="$DBUS_SESSION_BUS_ADDRESS" # the one session bus the tests may use
  if command -v gnome-keyring-daemon >/dev/null 2>&1 && command -v gdbus >/dev/null 2>&1; then
    # In the foreground, so it stays our child and we can stop it: daemonized, it outlives the bus.
    printf 'test-password' | gnome-keyring-daemon --foreground --unlock --components=secrets >/dev/null 2>&1 &
    keyring=$!
    trap 'kill "$keyring" 2>/dev/null || true; wait "$keyring" 2>/dev/null || true' EXIT
    # Ready when it owns the Secret Service name; asked earlier, the bus would start another, locked one.
    gdbus wait --session --timeout 30 org.freedesktop.secrets ||
      echo "with-keyring.sh: gnome-keyring did not start; the keyring tests will skip" >&2
  fi
  status=0
  "$@" || status=$?
  exit "$status"
fi

# The real dirs, recorded once: a nested run keeps those of the outermost one.
export CONVOCATIONS_TEST_REAL_HOME="${CONVOCATIONS_TEST_REAL_HOME:-$HOME}"
export CONVOCATIONS_TEST_REAL_CONFIG_HOME="${CONVOCATIONS_TEST_REAL_CONFIG_HOME:-${XDG_CONFIG_HOME:-$HOME/.config}}"
export CONVOCATIONS_TEST_REAL_DATA_HOME="${CONVOCATIONS_TEST_REAL_DATA_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}}"
export CONVOCATIONS_TEST_REAL_RUNTIME_DIR="${CONVOCATIONS_TEST_REAL_RUNTIME_DIR:-${XDG_RUNTIME_DIR:-/run/user/$(id -u)}}"
# Packages installed with `pip install --user` are found through HOME: keep finding them.
if [ -z "${PYTHONUSERBASE-}" ] && command -v python3 >/dev/null 2>&1; then
  PYTHONUSERBASE="$(python3 -m site --user-base)" && export PYTHONUSERBASE
fi

# In TMPDIR (else /tmp), short: Unix socket paths under it must fit in 104 bytes.
tmp="$(mktemp -d "${TMPDIR:-/tmp}/cvt.XXXXXX")" || {
  echo "with-keyring.sh: cannot create a directory in ${TMPDIR:-/tmp}: set TMPDIR to a short directory of yours" >&2
  exit 1
}
trap 'rm -rf "$tmp"' EXIT
export HOME="$tmp/home" XDG_RUNTIME_DIR="$tmp/run"
export XDG_CONFIG_HOME="$HOME/.config" XDG_DATA_HOME="$HOME/.local/share"
export XDG_CACHE_HOME="$HOME/.cache" XDG_STATE_HOME="$HOME/.local/state"
mkdir -p "$XDG_CONFIG_HOME" "$XDG_DATA_HOME" "$XDG_CACHE_HOME" "$XDG_STATE_HOME"
mkdir -m 700 "$XDG_RUNTIME_DIR"
# The person's desktop session: their bus and keyring, and the display their browser would open on.
unset DBUS_SESSION_BUS_ADDRESS DISPLAY WAYLAND_DISPLAY GNOME_KEYRING_CONTROL CONVOCATIONS_TEST_BUS

status=0
if command -v dbus-run-session >/dev/null 2>&1; then
  # The distribution's session bus, listening in $tmp: its own config listens in /tmp, which may not be writable.
  bus=()
  if [ -r /usr/share/dbus-1/session.conf ]; then
    sed "s|<listen>.*</listen>|<listen>unix:dir=$tmp</listen>|" /usr/share/dbus-1/session.conf >"$tmp/bus.conf"
    bus=(--config-file="$tmp/bus.conf")
  fi
  dbus-run-session ${bus[@]+"${bus[@]}"} -- "$BASH" "$0" --on-private-bus "$@" || status=$?
else
  "$@" || status=$?
fi
exit "$status"
