#!/bin/bash
# Runs inside the rdma-vm guest (scripts/rdma-vm.sh test), in the checkout, as root: the device is there
# and works (ibv_devinfo, rping through the kernel's RDMA CM), the addon loads and lists it, and the RDMA
# transport's tests and the suites under test/rdma/ pass on it. Each step prints
# "rdma-vm: guest-test: <step>"; a failed step prints "rdma-vm: guest-test: FAIL <step>: <why>".
set -uo pipefail
step() { echo "rdma-vm: guest-test: $*"; }
fail() { step "FAIL $*"; exit 1; }
t0=$SECONDS

step "the device: ibv_devinfo -d rxe0"
info=$(ibv_devinfo -v -d rxe0 2>&1) || { echo "$info"; fail "ibv_devinfo -d rxe0: no rxe0"; }
echo "$info" | grep -E '^hca_id|transport:|state:|max_cqe:|max_qp_wr:|max_mr_size:|max_qp:|max_cq:|active_mtu:|GID\[ *[0-9]+\]:' | sed 's/^[[:space:]]*/  /'
echo "$info" | grep -q PORT_ACTIVE || fail "ibv_devinfo -d rxe0: the port is not PORT_ACTIVE"
addr=$(ip -4 -o addr show dev eth0 | awk '{ sub(/\/.*/, "", $4); print $4; exit }')
step "rxe0's netdev: eth0, IPv4 ${addr:-none} (rdma link: $(rdma link show rxe0/1 2>&1 | tr -s ' '))"

step "rdma_cm over rxe0: rping -s / rping -c on $addr"
timeout 60 rping -s -a "$addr" -C 5 -S 64 >/tmp/rping-server.log 2>&1 &
server=$!
sleep 1
if ! timeout 60 rping -c -a "$addr" -C 5 -S 64 -v >/tmp/rping-client.log 2>&1; then
  cat /tmp/rping-client.log /tmp/rping-server.log
  fail "rping -c -a $addr: the kernel's RDMA CM and rxe0 do not work"
fi
wait "$server" || { cat /tmp/rping-server.log; fail "rping -s -a $addr exited with an error"; }
step "rping: $(grep -c 'ping data' /tmp/rping-client.log) pings"

if [ -f native/build/Release/derecho_rdma.node ]; then
  step "the addon: native/build/Release/derecho_rdma.node (built on the host by rdma-vm.sh)"
else
  step "the addon: node native/build.mjs (in the guest's copy: slow under software emulation)"
  s=$SECONDS
  node native/build.mjs || fail "node native/build.mjs: the addon does not build"
  step "addon built ($((SECONDS - s)) s)"
fi
node -e "const a=require('./native/build/Release/derecho_rdma.node'); console.log('  devices():', JSON.stringify(a.devices(), (k, v) => typeof v === 'bigint' ? v.toString() : v))" \
  || fail "the addon does not load or list its devices"

# The transport's tests (fake verbs and device rxe0), then the suites under test/rdma/ (e.g. a group of
# agents with transport rdma), each its own ava run so that each reports on its own.
suites=(node-agent/src/transport/rdma/rdma-transport.test.ts)
for f in test/rdma/*.test.ts; do [ -f "$f" ] && suites+=("$f"); done
failed=()
for f in "${suites[@]}"; do
  step "DERECHO_RDMA_DEVICE=rxe0 npx ava $f"
  s=$SECONDS
  # Software emulation makes everything 10-30x slower: the transport tests scale their waits by this.
  DERECHO_RDMA_DEVICE=rxe0 DERECHO_TEST_TIME_SCALE=${DERECHO_TEST_TIME_SCALE:-10} npx ava --timeout=30m "$f" 2>&1 | tee /tmp/ava.log
  rc=${PIPESTATUS[0]}
  counts=$(grep -Eo '^ *[0-9]+ (tests? (passed|failed)|known failures?|tests? skipped|tests? todo|uncaught exceptions?|unhandled rejections?)' /tmp/ava.log | sed 's/^ *//' | paste -sd, - | sed 's/,/, /g')
  step "result ${f##*/}: ${counts:-no ava summary}, exit code $rc, $((SECONDS - s)) s"
  [ "$rc" -eq 0 ] || failed+=("$f")
done
step "all steps $((SECONDS - t0)) s"
[ ${#failed[@]} -eq 0 ] || fail "on rxe0: ${failed[*]}"
