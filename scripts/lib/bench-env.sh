# Shared by scripts/bench-agent and scripts/bench-vm-run: a private world for
# real guests, like the end-to-end test (crates/banger/tests/e2e.rs) sets up.
#
#   bench_env_setup     checks tools, builds the binaries and the static agent,
#                       finds or builds the minimal image (cached), creates a
#                       network namespace, starts bangerd-root and bangerd in
#                       it and registers the image as $BENCH_IMAGE.
#   bench_banger ARGS   the CLI inside the namespace (bounded by $BENCH_CMD_TIMEOUT)
#   bench_ssh IP ARGS   plain ssh to a guest with banger's key (no host-key
#                       pinning: measures sshd, not banger)
#   bench_cleanup       deletes the VMs, stops the daemons by PID, deletes the
#                       namespace and the work dir; installed as an EXIT trap
#
# Nothing leaves loopback and the namespace: guests sit on the namespace's
# bridge, and nothing is routed out. Every wait is bounded.
#
# Environment: BENCH_RELEASE=1 builds the CLI and daemons with --release
# (default: the debug build the tests use; the guest agent is always release).
# BENCH_IMAGE_DIR=DIR uses a built image directory (rootfs.ext4, kernel/).

BENCH_IMAGE=bench-minimal
BENCH_CMD_TIMEOUT=${BENCH_CMD_TIMEOUT:-600}
BENCH_VM_ARGS=(--vcpu 2 --memory 1024)

bench_skip() {
    echo "SKIP: $*"
    exit 0
}

bench_log() { echo "== $*" >&2; }

# Seconds since the epoch, with nanoseconds.
bench_now() { date +%s.%N; }

# Median of the numbers on stdin, one per line.
bench_median() {
    python3 -c 'import statistics,sys; v=[float(x) for x in sys.stdin.read().split()]; print(f"{statistics.median(v):.3f}" if v else "nan")'
}

# bench_ratio A B: A / B with two decimals.
bench_ratio() {
    python3 -c 'import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f"{a/b:.2f}" if b else "inf")' "$1" "$2"
}

bench_check_tools() {
    [ "$(id -u)" -eq 0 ] || bench_skip "needs root (network namespace, bridge, taps)"
    local t
    for t in qemu-system-x86_64 ip nft ssh ssh-keygen git debugfs python3 timeout; do
        command -v "$t" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/root/.cargo/bin" command -v "$t" >/dev/null 2>&1 ||
            bench_skip "$t is not installed (scripts/install-deps installs it)"
    done
    export PATH="$PATH:/usr/sbin:/root/.cargo/bin"
}

bench_build() {
    local profile=() dir=debug
    if [ "${BENCH_RELEASE:-0}" = 1 ]; then profile=(--release); dir=release; fi
    bench_log "building banger, bangerd, bangerd-root (${dir}) and the static guest agent"
    cargo build -q "${profile[@]}" -p banger -p bangerd --bins >&2
    BENCH_TARGET=$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    BENCH_BIN="$BENCH_TARGET/$dir"
    BENCH_AGENT=$(scripts/build-agent-static 2>/dev/null | tail -n 1)
    [ -x "$BENCH_AGENT" ] || { echo "building the static agent failed" >&2; return 1; }
}

# A built image dir whose rootfs carries exactly our agent binary: one the
# tests already cached (also under $BANGER_TEST_CACHE), else one built now (minutes, once) into a cache
# keyed by the agent's and unit's hashes.
bench_find_image() {
    if [ -n "${BENCH_IMAGE_DIR:-}" ]; then
        BENCH_IMAGE_DIR_FOUND=$BENCH_IMAGE_DIR
        return
    fi
    local unit=crates/banger-agent/assets/banger-vsock-agent.service
    local want key d got
    want=$(sha256sum <"$BENCH_AGENT" | cut -d' ' -f1)
    for d in "$BENCH_TARGET"/banger-bench-cache/*/ "$BENCH_TARGET"/banger-test-cache/*/ \
        ${BANGER_TEST_CACHE:+"$BANGER_TEST_CACHE"/*/}; do
        [ -f "$d/rootfs.ext4" ] && [ -f "$d/kernel/vmlinuz" ] && [ -f "$d/build.json" ] || continue
        grep -q '"profile": "minimal"' "$d/build.json" || continue
        got=$(timeout 60 debugfs -R "cat /usr/local/bin/banger-vsock-agent" "$d/rootfs.ext4" 2>/dev/null | sha256sum | cut -d' ' -f1)
        if [ "$got" = "$want" ]; then
            BENCH_IMAGE_DIR_FOUND=${d%/}
            bench_log "using the cached minimal image $BENCH_IMAGE_DIR_FOUND (same agent binary)"
            return
        fi
    done
    key=$(cat "$BENCH_AGENT" "$unit" | sha256sum | cut -c1-32)
    d="$BENCH_TARGET/banger-bench-cache/$key"
    bench_log "building the minimal image with this agent into $d (mmdebstrap: minutes, once)"
    rm -rf "$d"
    mkdir -p "$(dirname "$d")"
    cargo build -q --release -p banger-image --example image-tool >&2
    timeout 1800 "$BENCH_TARGET/release/examples/image-tool" build --profile minimal --out "$d" \
        --name "$BENCH_IMAGE" --agent "$BENCH_AGENT" --agent-unit "$unit" >&2
    BENCH_IMAGE_DIR_FOUND=$d
    # Images for older agents are never used again: keep only this one.
    local old
    for old in "$BENCH_TARGET"/banger-bench-cache/*/; do
        [ "${old%/}" = "$d" ] || rm -rf "${old%/}"
    done
}

# Runs "$@" in the namespace with the bench HOME.
bench_in_ns() {
    ip netns exec "$BENCH_NS" env HOME="$BENCH_HOME" NO_COLOR=1 "$@"
}

bench_banger() {
    timeout "$BENCH_CMD_TIMEOUT" ip netns exec "$BENCH_NS" env HOME="$BENCH_HOME" \
        BANGER_SOCKET="$BENCH_WORK/run/bangerd.sock" NO_COLOR=1 "$BENCH_BIN/banger" "$@"
}

bench_ssh() {
    local ip=$1
    shift
    timeout "$BENCH_CMD_TIMEOUT" ip netns exec "$BENCH_NS" ssh -q -o BatchMode=yes -o ConnectTimeout=3 \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
        -i "$BENCH_HOME/.local/state/banger/ssh/id_ed25519" "root@$ip" "$@"
}

# The guest address of VM $1.
bench_vm_ip() {
    bench_banger vm show "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ip"])'
}

# bench_wait_file PATH SECONDS WHAT
bench_wait_file() {
    local deadline=$((SECONDS + $2))
    until [ -e "$1" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "$3 did not come up within $2 s" >&2
            return 1
        fi
        sleep 0.1
    done
}

bench_env_setup() {
    bench_check_tools
    cd "$(dirname "${BASH_SOURCE[0]}")/../.."
    bench_build
    bench_find_image

    BENCH_WORK=$(mktemp -d /var/tmp/banger-bench.XXXXXX)
    BENCH_HOME=$BENCH_WORK/home
    mkdir -p "$BENCH_HOME/.config/banger" "$BENCH_WORK/run" "$BENCH_WORK/root"
    : >"$BENCH_HOME/.config/banger/config.toml"
    BENCH_NS=banger-bench-$$
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    ip netns add "$BENCH_NS"
    BENCH_NS_MADE=1
    ip netns exec "$BENCH_NS" ip link set lo up

    bench_log "starting bangerd-root and bangerd in network namespace $BENCH_NS"
    # `ip netns exec` execs the daemon, so $! is the daemon's own PID.
    ip netns exec "$BENCH_NS" env HOME="$BENCH_HOME" NO_COLOR=1 "$BENCH_BIN/bangerd-root" \
        --socket "$BENCH_WORK/root/root.sock" --owner-uid 0 </dev/null >/dev/null 2>"$BENCH_WORK/bangerd-root.log" &
    BENCH_HELPER_PID=$!
    bench_wait_file "$BENCH_WORK/root/root.sock" 20 bangerd-root
    ip netns exec "$BENCH_NS" env HOME="$BENCH_HOME" NO_COLOR=1 BANGER_AGENT_BIN="$BENCH_AGENT" "$BENCH_BIN/bangerd" \
        --socket "$BENCH_WORK/run/bangerd.sock" --state-dir "$BENCH_WORK/state" \
        --cache-dir "$BENCH_WORK/cache" --root-socket "$BENCH_WORK/root/root.sock" \
        --config "$BENCH_HOME/.config/banger/config.toml" \
        </dev/null >/dev/null 2>"$BENCH_WORK/bangerd.log" &
    BENCH_DAEMON_PID=$!
    bench_wait_file "$BENCH_WORK/run/bangerd.sock" 30 bangerd
    local deadline=$((SECONDS + 30))
    until bench_banger vm list >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { echo "bangerd does not answer" >&2; return 1; }
        sleep 0.2
    done

    local k=$BENCH_IMAGE_DIR_FOUND/kernel
    bench_banger kernel register bench-kernel --vmlinuz "$k/vmlinuz" --initrd "$k/initrd.img" >/dev/null
    bench_banger image register "$BENCH_IMAGE" --rootfs "$BENCH_IMAGE_DIR_FOUND/rootfs.ext4" \
        --kernel bench-kernel >/dev/null
    BENCH_DAEMON_LOG=$BENCH_WORK/bangerd.log
}

bench_stop_pid() {
    local pid=$1 name=$2 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "$name (pid $pid) ignored SIGTERM for 30 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "${BENCH_DAEMON_PID:-}" ] && kill -0 "$BENCH_DAEMON_PID" 2>/dev/null; then
        local vm
        for vm in $(BENCH_CMD_TIMEOUT=30 bench_banger vm list --json 2>/dev/null |
            python3 -c 'import json,sys; [print(v["name"]) for v in json.load(sys.stdin)]' 2>/dev/null); do
            BENCH_CMD_TIMEOUT=120 bench_banger vm delete "$vm" >/dev/null 2>&1 ||
                echo "warning: could not delete VM $vm" >&2
        done
    fi
    if [ "$rc" -ne 0 ] && [ -n "${BENCH_WORK:-}" ]; then
        echo "----- bangerd.log (tail) -----" >&2
        tail -n 40 "$BENCH_WORK/bangerd.log" >&2 2>/dev/null
        for c in "$BENCH_WORK"/state/vms/*/console.log; do
            [ -f "$c" ] && { echo "----- $c (tail) -----" >&2; tail -n 30 "$c" >&2; }
        done
    fi
    bench_stop_pid "${BENCH_DAEMON_PID:-}" bangerd
    bench_stop_pid "${BENCH_HELPER_PID:-}" bangerd-root
    # VMs outlive their daemon by design: kill any VMM (and its helpers) a
    # failed delete left, by the pids our daemon recorded for them.
    local h pid
    for h in "${BENCH_WORK:-/nonexistent}"/state/vms/*/vmm.json; do
        [ -f "$h" ] || continue
        for pid in $(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); [print(p) for p in [x.get("process",{}).get("pid") for x in v.get("helpers") or []] + [v.get("process",{}).get("pid")] if p]' "$h" 2>/dev/null); do
            echo "killing leftover VMM process $pid ($h)" >&2
            kill -KILL "$pid" 2>/dev/null
        done
    done
    [ -n "${BENCH_NS_MADE:-}" ] && ip netns del "$BENCH_NS"
    [ -n "${BENCH_WORK:-}" ] && rm -rf "$BENCH_WORK"
    [ -n "${BENCH_SCRATCH:-}" ] && rm -rf "$BENCH_SCRATCH"
    exit "$rc"
}

# A tree of $2 small files (100 directories, sizes 64 B .. 8 KiB, fixed
# seed) under $1.
bench_make_tree() {
    python3 - "$1" "$2" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, f"d{i % 100:03d}", f"s{(i // 100) % 10}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.txt"), "wb") as f:
        f.write(rng.randbytes(rng.randint(64, 8192)))
EOF
}
