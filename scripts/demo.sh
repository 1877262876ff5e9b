#!/usr/bin/env bash
# make demo: start the agent on its embedded defaults (temporary state dir and
# socket), create a python sandbox, run code in it, copy a file in and out,
# show the output and the usage, kill the sandbox and stop the agent.
set -euo pipefail
build=${1:-build}
bin="$(cd "$build/bin" && pwd)"

if [ "$(id -u)" -ne 0 ]; then
  echo "make demo needs root (namespaces, cgroups, mounts): run it as root or with sudo" >&2
  exit 1
fi

work=$(mktemp -d /tmp/nodeagent-demo-XXXXXX)
chmod 711 "$work"  # sandboxes mount their root below it under their own uid
sock="$work/agent.sock"
export SBX_CONNECT="unix:$sock"
agent_pid=""
cleanup() {
  if [ -n "$agent_pid" ]; then
    kill -TERM "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "starting nodeagent (state: $work/state, socket: $sock)"
"$bin/nodeagent" --state-dir "$work/state" --listen "unix:$sock" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 1 200); do
  "$bin/sbx" ls >/dev/null 2>&1 && break
  sleep 0.05
done
"$bin/sbx" ls >/dev/null || { cat "$work/agent.log"; exit 1; }

step "sbx create --template python --memory 512M --cpus 1 --timeout 300"
id=$("$bin/sbx" create --template python --memory 512M --cpus 1 --timeout 300)
echo "$id"

step "sbx exec $id -- python3 (a short program)"
"$bin/sbx" exec "$id" -- python3 -c '
import os, platform, socket
print("hello from", socket.gethostname(), "pid", os.getpid(), "uid", os.getuid())
print("python", platform.python_version(), "sees", len(os.listdir("/proc")) , "entries in /proc")
print("squares:", [n * n for n in range(10)])
'

step "sbx cp (in): a local file into the sandbox"
printf 'the quick brown fox\njumps over the lazy dog\n' > "$work/input.txt"
"$bin/sbx" cp "$work/input.txt" "$id:/root/input.txt"
"$bin/sbx" exec "$id" -- python3 -c '
text = open("/root/input.txt").read()
open("/root/output.txt", "w").write(text.upper())
print("words:", len(text.split()))
'

step "sbx cp (out): the result back to the host"
"$bin/sbx" cp "$id:/root/output.txt" "$work/output.txt"
cat "$work/output.txt"

step "sbx exec $id -- node -e ..."
"$bin/sbx" exec "$id" -- node -e 'console.log("node", process.version, "says", [1,2,3].map(x => x * 2))'

step "sbx info $id"
"$bin/sbx" info "$id"

step "sbx usage $id"
"$bin/sbx" usage "$id"

step "sbx kill $id"
"$bin/sbx" kill "$id"
"$bin/sbx" ls

step "stopping nodeagent"
kill -TERM "$agent_pid"
wait "$agent_pid" || true
agent_pid=""
echo "done"
