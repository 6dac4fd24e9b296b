#!/usr/bin/env bash
# Real-verbs tests: a qemu virtual machine whose kernel has the software RoCE driver (rdma_rxe), built from
# Debian packages, in which commands of this project run against a real `rxe0` device. docs/rdma.md.
#
#   scripts/rdma-vm.sh setup
#       Idempotent. Installs what is missing with apt-get (qemu, busybox-static, rdma-core and its tools,
#       the addon's build dependencies), fetches Debian's linux-image-amd64 kernel (apt-get download +
#       dpkg-deb -x) and builds a busybox initramfs with the modules the guest needs (virtio, 9p, overlayfs,
#       rdma_rxe, rdma_ucm, ib_uverbs and what they depend on, resolved with the kernel's modules.dep and
#       modules.alias). Cached under ~/.cache/derecho-ts/rdma-vm/<kernel version>/: a re-run is instant.
#   scripts/rdma-vm.sh run [--cpus N] [--mem MiB] [--timeout S] [--env NAME=VALUE]... -- CMD...
#       Boots the guest (KVM when /dev/kvm works, else software emulation) with the host's root filesystem
#       read-only over 9p under a tmpfs overlay (so this checkout, node_modules and all, is there and
#       writable; writes stay in the guest), eth0 on qemu's user network (restricted: nothing leaves the
#       guest, address 10.0.2.15/24), creates rxe0 (`rdma link add rxe0 type rxe netdev eth0`) and runs CMD
#       as root in this checkout, streaming its output. Exits with CMD's exit code; 124 on the timeout
#       (default 1800 s), 125 when the guest failed before CMD ran.
#   scripts/rdma-vm.sh test [--cpus N (default 2)] [--mem MiB] [--timeout S]
#       setup, then in the guest: ibv_devinfo shows rxe0, the addon builds, and
#       `DERECHO_RDMA_DEVICE=rxe0 npx ava node-agent/src/transport/rdma/rdma-transport.test.ts`;
#       ends with one line `rdma-vm: PASS|FAIL ... (N s)`.
#
# Where qemu cannot be installed or run (not root, no apt-get, not Debian/Ubuntu), each subcommand prints
# `rdma-vm: skipped: <reason>` and exits 0; with CI=true that is a failure (exit 1).
#
# Environment: DERECHO_RDMA_VM_CACHE (cache directory), DERECHO_RDMA_VM_QEMU (the qemu binary, default
# qemu-system-x86_64), DERECHO_RDMA_VM_NO_INSTALL=1 (never run apt-get: missing packages skip),
# DERECHO_RDMA_VM_KERNEL_PKG (a linux-image-* package instead of what linux-image-amd64 depends on),
# DERECHO_RDMA_VM_CPUS / _MEM / _TIMEOUT (defaults of the options). CI, PATH and DERECHO_* are passed
# into the guest.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${DERECHO_RDMA_VM_CACHE:-${HOME:-/root}/.cache/derecho-ts/rdma-vm}
qemu=${DERECHO_RDMA_VM_QEMU:-qemu-system-x86_64}
# Bumped when what goes into the initramfs changes in a way the key below does not see.
initramfs_format=1

# What the host needs: the VM, the initramfs's shell, the verbs stack's user space (the guest runs the
# host's binaries and libraries), and the addon's build dependencies (scripts/install-rdma-deps.sh).
packages=(qemu-system-x86 busybox-static cpio kmod iproute2 rdma-core ibverbs-providers ibverbs-utils rdmacm-utils
  perftest libibverbs-dev librdmacm-dev g++ make)
# The guest kernel's modules: loaded in this order, each after what modules.dep says it needs. Aliases
# (modules.alias) name what the kernel asks for by name at run time: rdma_rxe's ICRC uses crypto "crc32".
guest_modules=(virtio_pci virtio_net 9pnet_virtio 9p overlay ib_uverbs rdma_ucm rdma_rxe)
guest_aliases=(crypto-crc32)

say() { echo "rdma-vm: $*"; }
die() { echo "rdma-vm: error: $*" >&2; exit 1; }

# A prerequisite that cannot be had here: skip (exit 0), or fail under CI.
skip() {
  if [ "${CI:-}" = "true" ]; then
    echo "rdma-vm: FAIL: $* (CI=true: the real-verbs test must run)" >&2
    exit 1
  fi
  say "skipped: $*"
  exit 0
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

apt_lock=(-o DPkg::Lock::Timeout=600)
apt_updated=
apt_update() {
  [ -n "$apt_updated" ] && return 0
  say "setup: apt-get update"
  apt-get "${apt_lock[@]}" update -qq >/dev/null
  apt_updated=1
}

can_install() {
  [ "${DERECHO_RDMA_VM_NO_INSTALL:-}" != "1" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]
}

ensure_packages() {
  local missing=() p
  if [ -n "${DERECHO_RDMA_VM_QEMU:-}" ] && ! command -v "$qemu" >/dev/null 2>&1; then
    skip "qemu binary $qemu not found (DERECHO_RDMA_VM_QEMU)"
  fi
  if ! command -v dpkg-query >/dev/null 2>&1; then
    command -v "$qemu" >/dev/null 2>&1 || skip "no $qemu and no dpkg (not a Debian/Ubuntu host) to install it"
    skip "not a Debian/Ubuntu host (no dpkg): the guest is built from Debian packages"
  fi
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if ! can_install; then
      local why
      if [ "${DERECHO_RDMA_VM_NO_INSTALL:-}" = "1" ]; then why="DERECHO_RDMA_VM_NO_INSTALL=1"
      elif ! command -v apt-get >/dev/null 2>&1; then why="no apt-get"
      else why="not root"; fi
      skip "missing ${missing[*]} and cannot install them ($why)"
    fi
    apt_update
    say "setup: installing ${missing[*]}"
    mkdir -p "$cache"
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >"$cache/apt.log" 2>&1 \
      || { cat "$cache/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
  fi
  command -v "$qemu" >/dev/null 2>&1 || skip "no qemu binary $qemu"
  [ -x /bin/busybox ] || skip "no /bin/busybox (busybox-static)"
}

# The linux-image-<version> package that linux-image-amd64 depends on (from the local apt lists).
kernel_package() {
  if [ -n "${DERECHO_RDMA_VM_KERNEL_PKG:-}" ]; then echo "$DERECHO_RDMA_VM_KERNEL_PKG"; return; fi
  apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

# Prints the module files (paths relative to the modules directory) to load, dependencies first.
resolve_modules() {
  local moddir=$1
  awk -v targets="${guest_modules[*]}" -v aliases="${guest_aliases[*]}" '
    function norm(p,   n) { n = p; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n); gsub(/-/, "_", n); return n }
    function emit(p) { if (!(p in done)) { done[p] = 1; print p } }
    function load(name, required,   n, i, d) {
      if (name in builtin) return 1
      if (!(name in path)) {
        if (required) { print "rdma-vm: error: module " name " is neither built in nor in modules.dep" > "/dev/stderr"; bad = 1 }
        return 0
      }
      n = split(deps[name], d, " ")
      for (i = n; i >= 1; i--) emit(d[i])   # modules.dep lists the deepest dependency last
      emit(path[name])
      return 1
    }
    FILENAME ~ /modules\.builtin$/ { builtin[norm($1)] = 1; next }
    FILENAME ~ /modules\.alias$/ { if ($1 == "alias") { m = $3; gsub(/-/, "_", m); alias[$2] = alias[$2] " " m }; next }
    FILENAME ~ /modules\.dep$/ {
      p = $1; sub(/:$/, "", p); n = norm(p); path[n] = p; deps[n] = ""
      for (i = 2; i <= NF; i++) deps[n] = deps[n] " " $i
      next
    }
    END {
      nt = split(targets, t, " "); na = split(aliases, a, " ")
      for (i = 1; i <= nt; i++) {
        if (t[i] == "rdma_rxe") {
          # what rdma_rxe asks for at run time, before it
          for (j = 1; j <= na; j++) {
            k = split(alias[a[j]], provider, " "); ok = 0
            for (l = 1; l <= k; l++) ok += load(provider[l], 0)
            if (!ok) { print "rdma-vm: error: nothing provides " a[j] " (modules.alias)" > "/dev/stderr"; bad = 1 }
          }
        }
        load(t[i], 1)
      }
      exit bad
    }
  ' "$moddir/modules.builtin" "$moddir/modules.alias" "$moddir/modules.dep"
}

# Sets kdir (the cache directory of the kernel) and kver; builds what is missing.
setup() {
  ensure_packages
  mkdir -p "$cache"
  exec 9>"$cache/setup.lock"
  flock 9

  local pkg
  pkg=$(kernel_package)
  if [ -z "$pkg" ] && can_install; then
    apt_update
    pkg=$(kernel_package)
  fi
  if [ -z "$pkg" ]; then
    # No apt lists: the newest kernel already cached will do.
    pkg=$(find "$cache" -mindepth 2 -maxdepth 2 -name 'linux-image-*.deb' -printf '%f\n' 2>/dev/null | sort -V | tail -n 1 | sed 's/_.*//')
    [ -n "$pkg" ] || skip "apt-cache knows no linux-image-amd64 (run apt-get update as root) and no kernel is cached in $cache"
  fi
  kver=${pkg#linux-image-}
  kdir=$cache/$kver
  mkdir -p "$kdir"

  local deb
  deb=$(find "$kdir" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)
  if [ -z "$deb" ]; then
    command -v apt-get >/dev/null 2>&1 || skip "no apt-get to download $pkg"
    say "setup: downloading $pkg"
    (cd "$kdir" && apt-get -o APT::Sandbox::User=root download -qq "$pkg" >/dev/null 2>"$kdir/download.err") || {
      if can_install; then
        apt_update
        (cd "$kdir" && apt-get -o APT::Sandbox::User=root download -qq "$pkg" >/dev/null 2>"$kdir/download.err") || die "apt-get download $pkg: $(cat "$kdir/download.err")"
      else
        skip "apt-get download $pkg failed: $(cat "$kdir/download.err")"
      fi
    }
    deb=$(find "$kdir" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)
    [ -n "$deb" ] || die "apt-get download $pkg left no .deb in $kdir"
  fi

  local key
  key=$( { echo "format $initramfs_format"; basename "$deb"; echo "${guest_modules[*]}"; echo "${guest_aliases[*]}";
           sha256sum "$here/rdma-vm/init" /bin/busybox | cut -d' ' -f1; } | sha256sum | cut -d' ' -f1)
  if [ -f "$kdir/vmlinuz" ] && [ -f "$kdir/initrd.gz" ] && [ "$(cat "$kdir/initrd.key" 2>/dev/null)" = "$key" ]; then
    say "setup: cached (kernel $kver, $kdir)"
    exec 9>&-
    return 0
  fi

  say "setup: building the guest for kernel $kver"
  local x=$kdir/extract stage=$kdir/stage moddir m
  rm -rf "$x" "$stage"
  dpkg-deb -x "$deb" "$x"
  moddir=
  for m in "$x/lib/modules/$kver" "$x/usr/lib/modules/$kver"; do [ -d "$m" ] && moddir=$m; done
  [ -n "$moddir" ] || die "no lib/modules/$kver in $deb"
  [ -f "$x/boot/vmlinuz-$kver" ] || die "no boot/vmlinuz-$kver in $deb"
  # The package leaves modules.dep and modules.alias to its postinst: make them here.
  [ -f "$moddir/modules.dep" ] || depmod -b "$x" "$kver" || die "depmod -b $x $kver failed"
  for m in "$x/lib/modules/$kver" "$x/usr/lib/modules/$kver"; do [ -f "$m/modules.dep" ] && moddir=$m; done
  [ -f "$moddir/modules.dep" ] || die "depmod made no modules.dep for $kver"

  mkdir -p "$stage/bin" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/tmp" "$stage/mnt" "$stage/lib/modules"
  cp /bin/busybox "$stage/bin/busybox"
  cp "$here/rdma-vm/init" "$stage/init"
  chmod 755 "$stage/init"
  local list
  list=$(resolve_modules "$moddir") || die "resolving the guest's modules in $moddir"
  : > "$stage/modules.load"
  while read -r m; do
    local out=$stage/lib/modules/${m%.xz}
    out=${out%.zst}; out=${out%.gz}
    mkdir -p "$(dirname "$out")"
    case "$m" in
      *.ko.xz) xz -dc "$moddir/$m" > "$out" ;;
      *.ko.zst) zstd -qdc "$moddir/$m" > "$out" ;;
      *.ko.gz) gzip -dc "$moddir/$m" > "$out" ;;
      *) cp "$moddir/$m" "$out" ;;
    esac
    echo "${out#"$stage/lib/modules/"}" >> "$stage/modules.load"
  done <<< "$list"
  say "setup: modules: $(sed 's/.*\///; s/\.ko$//' "$stage/modules.load" | tr '\n' ' ')"
  (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$kdir/initrd.gz.tmp"
  cp "$x/boot/vmlinuz-$kver" "$kdir/vmlinuz"
  mv "$kdir/initrd.gz.tmp" "$kdir/initrd.gz"
  echo "$key" > "$kdir/initrd.key"
  rm -rf "$x" "$stage"
  say "setup: built $kdir/vmlinuz and $kdir/initrd.gz ($(du -k "$kdir/initrd.gz" | cut -f1) KiB)"
  exec 9>&-
}

cpus=${DERECHO_RDMA_VM_CPUS:-1}
mem=${DERECHO_RDMA_VM_MEM:-3072}
timeout_s=${DERECHO_RDMA_VM_TIMEOUT:-1800}
guest_env=()

# Parses the options of run and test; sets cmd to what follows `--`.
parse_options() {
  cmd=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --cpus) cpus=${2:?--cpus needs a number}; shift 2 ;;
      --mem) mem=${2:?--mem needs MiB}; shift 2 ;;
      --timeout) timeout_s=${2:?--timeout needs seconds}; shift 2 ;;
      --env) [[ "${2:-}" == *=* ]] || die "--env needs NAME=VALUE"; guest_env+=("$2"); shift 2 ;;
      --) shift; cmd=("$@"); return ;;
      *) die "unknown option $1 (usage: rdma-vm.sh run [--cpus N] [--mem MiB] [--timeout S] [--env NAME=VALUE]... -- CMD...)" ;;
    esac
  done
}

# Whether KVM runs this guest: /dev/kvm can be there and still not work (seen here: a nested machine
# without virtualisation extensions, where a KVM guest makes no progress). Checked by booting the guest
# to its /init under KVM with a short timeout, once per host boot (the answer is cached);
# DERECHO_RDMA_VM_KVM=0 or 1 decides without checking.
kvm_works() {
  case "${DERECHO_RDMA_VM_KVM:-}" in 0) return 1 ;; 1) return 0 ;; esac
  [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
  local boot answer file
  boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
  file=$cache/kvm-works.$boot
  if [ ! -f "$file" ]; then
    say "run: /dev/kvm is there: checking that a guest boots under KVM (once per host boot)"
    answer=no
    if timeout -k 2 20 "$qemu" -accel kvm -cpu host -m 256 -nodefaults -no-user-config -display none -no-reboot \
        -serial stdio -kernel "$kdir/vmlinuz" -initrd "$kdir/initrd.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 rdmavm.probe" </dev/null 2>/dev/null | grep -q 'rdma-vm: probe ok'; then
      answer=yes
    fi
    rm -f "$cache"/kvm-works.*
    echo "$answer" > "$file"
    say "run: KVM works: $answer"
  fi
  [ "$(cat "$file")" = yes ]
}

# Builds the RDMA addon on the host (compiling it under software emulation takes minutes) from a copy
# of this checkout's native/, cached by the hash of its sources and the Node version; the guest runs the
# host's Node and libraries, so the binary is the one it needs. Sets addon to its path, or to "" with
# addon_error set when it does not build.
build_addon() {
  addon='' addon_error=''
  [ -f "$repo/native/build.mjs" ] || { addon_error="no native/build.mjs in $repo"; return; }
  local key dir log
  key=$( { node --version; (cd "$repo" && find native -path native/build -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum); } | sha256sum | cut -c1-16)
  dir=$cache/addon/$key
  if [ ! -f "$dir/native/build/Release/derecho_rdma.node" ]; then
    say "addon: building native/ on the host (node native/build.mjs in $dir)"
    rm -rf "$dir"
    mkdir -p "$dir"
    (cd "$repo" && find native -path native/build -prune -o -print | cpio -pdm --quiet "$dir")
    cp "$repo/package.json" "$dir/"
    ln -s "$repo/node_modules" "$dir/node_modules"
    log=$cache/addon/$key.log
    if ! (cd "$dir" && node native/build.mjs) >"$log" 2>&1; then
      addon_error="node native/build.mjs failed: $(tail -n 20 "$log")"
      rm -rf "$dir"
      return
    fi
    # keep the newest few builds
    find "$cache/addon" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +4 | cut -d' ' -f2- | xargs -r rm -rf
  fi
  addon=$dir/native/build/Release/derecho_rdma.node
}

# Boots the guest, runs "${cmd[@]}" in it; sets run_rc, and run_log to the console log.
run_guest() {
  [ ${#cmd[@]} -gt 0 ] || die "run: no command (rdma-vm.sh run -- CMD...)"
  [[ "$cpus" =~ ^[1-9][0-9]*$ ]] || die "--cpus $cpus: not a number"
  [[ "$mem" =~ ^[1-9][0-9]*$ ]] || die "--mem $mem: not a number of MiB"
  [[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || die "--timeout $timeout_s: not a number of seconds"
  mkdir -p "$cache/runs"
  local id share
  id=$(mktemp -d "$cache/runs/run.XXXXXX")
  share=$id/share
  mkdir -p "$share"
  run_log=$id/console.log

  {
    echo '#!/bin/bash'
    echo '# Written by scripts/rdma-vm.sh: the command it runs in the guest.'
    echo 'export HOME=/root LANG=C.UTF-8 TERM=dumb'
    printf 'export PATH=%q\n' "$PATH:/usr/sbin:/sbin"
    local v
    for v in $(compgen -e); do
      case "$v" in CI|DERECHO_*) printf 'export %s=%q\n' "$v" "${!v}" ;; esac
    done
    for v in "${guest_env[@]}"; do printf 'export %s=%q\n' "${v%%=*}" "${v#*=}"; done
    echo 'ulimit -l unlimited 2>/dev/null'
    printf 'cd %q || exit 125\n' "$repo"
    if [ -n "${addon:-}" ]; then
      echo '# the addon built on the host, into the guest'"'"'s copy of the checkout (the host'"'"'s stays as it is)'
      printf 'mkdir -p native/build/Release && cp %q native/build/Release/derecho_rdma.node || exit 125\n' "$addon"
    fi
    printf '%q ' "${cmd[@]}"
    echo
  } > "$share/guest.sh"

  # Under software emulation, no protection keys (pku): V8 uses them for its JIT code when the CPU has them,
  # and agents in the guest died of SIGSEGV at start-up now and then (1 run in several; never on a host).
  local accel=(-accel "tcg,thread=multi") cpu=max,-pku how="software emulation"
  if kvm_works; then accel=(-accel kvm); cpu=max; how=KVM; fi
  say "run: booting the guest (kernel $kver, $cpus CPU, $mem MiB, $how; timeout ${timeout_s} s)"
  local qemu_rc=0
  set +e
  timeout -k 10 "$timeout_s" "$qemu" \
    "${accel[@]}" -cpu "$cpu" -smp "$cpus" -m "$mem" \
    -nodefaults -no-user-config -display none -no-reboot \
    -chardev stdio,id=con,signal=on -serial chardev:con \
    -kernel "$kdir/vmlinuz" -initrd "$kdir/initrd.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 rdmavm.rundir=$share" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$share,mount_tag=rundir,security_model=none,multidevs=remap" \
    -netdev user,id=net0,restrict=on,ipv6=off -device virtio-net-pci,netdev=net0,romfile= \
    < /dev/null 2>&1 | sed -u 's/\r$//' | tee "$run_log"
  qemu_rc=${PIPESTATUS[0]}
  set -e
  if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
    say "timed out after ${timeout_s} s: the guest was stopped before the command finished (--timeout S, DERECHO_RDMA_VM_TIMEOUT)"
    run_rc=124
  elif [ -f "$share/rc" ]; then
    run_rc=$(cat "$share/rc")
  else
    say "the guest stopped without reporting an exit code (qemu exit code $qemu_rc): see its output above"
    run_rc=125
  fi
  cp "$run_log" "$cache/last-run.log" 2>/dev/null || true
  rm -rf "$share"
}

cleanup_run() { [ -n "${run_log:-}" ] && rm -rf "$(dirname "$run_log")"; return 0; }

main() {
local sub=${1:-}
[ $# -gt 0 ] && shift
case "$sub" in
  setup)
    [ $# -eq 0 ] || die "setup takes no arguments"
    start=$SECONDS
    setup
    say "setup: done ($((SECONDS - start)) s)"
    ;;
  run)
    parse_options "$@"
    [ ${#cmd[@]} -gt 0 ] || die "run: no command (rdma-vm.sh run [--cpus N] [--mem MiB] [--timeout S] -- CMD...)"
    setup
    build_addon
    [ -z "$addon_error" ] || say "run: note: the guest gets no addon built on the host: $addon_error"
    run_guest
    cleanup_run
    exit "$run_rc"
    ;;
  test)
    # Two guest CPUs unless told otherwise: the group test runs 3 agent processes at once, and with one
    # emulated CPU a member handling a 16 MiB message starved the others.
    [ -n "${DERECHO_RDMA_VM_CPUS:-}" ] || cpus=2
    parse_options "$@"
    [ ${#cmd[@]} -eq 0 ] || die "test takes no command"
    start=$SECONDS
    setup
    build_addon
    if [ -n "$addon_error" ]; then
      echo "$addon_error" >&2
      say "FAIL the addon does not build on the host ($((SECONDS - start)) s)"
      exit 1
    fi
    cmd=(bash scripts/rdma-vm/guest-test.sh)
    run_guest
    results=$( (grep -E '^rdma-vm: guest-test: result ' "$run_log" || true) | sed 's/^rdma-vm: guest-test: result //' | paste -sd';' - | sed 's/;/; /g')
    step=$( (grep -E '^rdma-vm: guest-test: FAIL ' "$run_log" || true) | tail -n 1 | sed 's/^rdma-vm: guest-test: FAIL //')
    cleanup_run
    if [ "$run_rc" -eq 0 ]; then
      say "PASS rxe0 (kernel $kver): ibv_devinfo, rping, addon; ${results:-no test results} ($((SECONDS - start)) s)"
    else
      say "FAIL rxe0 (kernel $kver): ${step:-exit code $run_rc}${results:+; $results} ($((SECONDS - start)) s)"
    fi
    exit "$run_rc"
    ;;
  modules)
    # What the guest loads from a kernel's modules directory (one with modules.dep), in load order.
    [ $# -eq 1 ] || die "usage: rdma-vm.sh modules <lib/modules/VERSION directory>"
    resolve_modules "$1"
    ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
}

# One line, read whole before it runs: editing this file while it runs does not change what runs.
main "$@"; exit $?
