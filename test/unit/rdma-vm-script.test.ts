// scripts/rdma-vm.sh, the real-verbs test's virtual machine, without booting one: the scripts parse (and
// pass shellcheck where it is installed), a host without qemu skips with the reason (and fails under CI),
// and the guest's kernel modules are ordered from modules.dep, modules.alias and modules.builtin.

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SCRIPT = 'scripts/rdma-vm.sh';
const BASH_SCRIPTS = [SCRIPT, 'scripts/rdma-vm/guest-test.sh'];
const INIT = 'scripts/rdma-vm/init'; // busybox sh

function sh(cmd: string, args: string[], env: Record<string, string> = {}) {
  const base = { ...process.env };
  delete base['CI'];
  return spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', env: { ...base, ...env }, timeout: 60_000 });
}

function tempDir(t: { teardown: (f: () => void) => void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rdma-vm-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('the scripts parse (bash -n, sh -n for the guest init)', (t) => {
  for (const f of BASH_SCRIPTS) {
    const r = sh('bash', ['-n', f]);
    t.is(r.status, 0, `${f}: ${r.stderr}`);
  }
  const r = sh('sh', ['-n', INIT]);
  t.is(r.status, 0, `${INIT}: ${r.stderr}`);
});

test('shellcheck finds nothing (where shellcheck is installed)', (t) => {
  if (sh('bash', ['-c', 'command -v shellcheck']).status !== 0) {
    t.log('shellcheck is not installed: skipped (apt-get install shellcheck)');
    t.pass();
    return;
  }
  const r = sh('shellcheck', BASH_SCRIPTS);
  t.is(r.status, 0, r.stdout + r.stderr);
  const init = sh('shellcheck', ['-s', 'sh', INIT]);
  t.is(init.status, 0, init.stdout + init.stderr);
});

// No qemu, and nothing may be installed: the way a machine without qemu (or without root) looks.
function noQemu(cache: string): Record<string, string> {
  return { DERECHO_RDMA_VM_QEMU: '/nonexistent/qemu-system-x86_64', DERECHO_RDMA_VM_NO_INSTALL: '1', DERECHO_RDMA_VM_CACHE: cache };
}

for (const sub of [['test'], ['setup'], ['run', '--', 'true']]) {
  test(`without qemu, ${sub[0]} skips with the reason and exits 0`, (t) => {
    const cache = path.join(tempDir(t), 'cache');
    const r = sh('bash', [SCRIPT, ...sub], noQemu(cache));
    t.is(r.status, 0, r.stdout + r.stderr);
    t.regex(r.stdout, /^rdma-vm: skipped: qemu binary \/nonexistent\/qemu-system-x86_64 not found \(DERECHO_RDMA_VM_QEMU\)$/m);
    t.false(r.stdout.includes('booting'), 'nothing was started');
  });
}

test('without qemu under CI=true, test fails and says why', (t) => {
  const cache = path.join(tempDir(t), 'cache');
  const r = sh('bash', [SCRIPT, 'test'], { ...noQemu(cache), CI: 'true' });
  t.is(r.status, 1);
  t.regex(r.stderr, /^rdma-vm: FAIL: qemu binary \/nonexistent\/qemu-system-x86_64 not found \(DERECHO_RDMA_VM_QEMU\) \(CI=true: the real-verbs test must run\)$/m);
  t.notRegex(r.stdout, /skipped/);
});

test('usage errors: unknown subcommand, run without a command, bad options', (t) => {
  const cache = path.join(tempDir(t), 'cache');
  const env = noQemu(cache);
  const unknown = sh('bash', [SCRIPT, 'frobnicate'], env);
  t.is(unknown.status, 2);
  t.regex(unknown.stderr, /scripts\/rdma-vm\.sh run \[--cpus N\]/);
  const noCmd = sh('bash', [SCRIPT, 'run'], env);
  t.is(noCmd.status, 1);
  t.regex(noCmd.stderr, /run: no command/);
  const badOpt = sh('bash', [SCRIPT, 'run', '--frob', '--', 'true'], env);
  t.is(badOpt.status, 1);
  t.regex(badOpt.stderr, /unknown option --frob/);
  const help = sh('bash', [SCRIPT, '--help'], env);
  t.is(help.status, 0);
  t.regex(help.stdout, /scripts\/rdma-vm\.sh setup/);
});

test('the guest modules come from modules.dep in load order, builtins left out, crc32 through modules.alias', (t) => {
  const dir = tempDir(t);
  const moddir = path.join(dir, 'lib/modules/9.9.9-test');
  mkdirSync(moddir, { recursive: true });
  // A made-up kernel: virtio_pci is built in; rdma_rxe needs ib_core and ip6_udp_tunnel (which needs
  // udp_tunnel); rdma_ucm needs rdma_cm which needs iw_cm, ib_cm and ib_core; crypto-crc32 is provided by
  // two modules, one of them with a dash in its file name.
  writeFileSync(path.join(moddir, 'modules.builtin'), 'kernel/drivers/virtio/virtio_pci.ko\nkernel/lib/crc32.ko\n');
  writeFileSync(path.join(moddir, 'modules.alias'), [
    '# Aliases extracted from modules themselves.',
    'alias crypto-crc32 crc32_pclmul',
    'alias crypto-crc32 crc32_generic',
    'alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_net',
  ].join('\n') + '\n');
  writeFileSync(path.join(moddir, 'modules.dep'), [
    'kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz',
    'kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz',
    'kernel/net/core/failover.ko.xz:',
    'kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz',
    'kernel/net/9p/9pnet.ko.xz:',
    'kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz',
    'kernel/fs/netfs/netfs.ko.xz:',
    'kernel/fs/overlayfs/overlay.ko.xz:',
    'kernel/drivers/infiniband/core/ib_core.ko.xz:',
    'kernel/drivers/infiniband/core/ib_uverbs.ko.xz: kernel/drivers/infiniband/core/ib_core.ko.xz',
    'kernel/drivers/infiniband/core/iw_cm.ko.xz: kernel/drivers/infiniband/core/ib_core.ko.xz',
    'kernel/drivers/infiniband/core/ib_cm.ko.xz: kernel/drivers/infiniband/core/ib_core.ko.xz',
    'kernel/drivers/infiniband/core/rdma_cm.ko.xz: kernel/drivers/infiniband/core/iw_cm.ko.xz kernel/drivers/infiniband/core/ib_cm.ko.xz kernel/drivers/infiniband/core/ib_core.ko.xz',
    'kernel/drivers/infiniband/core/rdma_ucm.ko.xz: kernel/drivers/infiniband/core/rdma_cm.ko.xz kernel/drivers/infiniband/core/iw_cm.ko.xz kernel/drivers/infiniband/core/ib_cm.ko.xz kernel/drivers/infiniband/core/ib_core.ko.xz',
    'kernel/arch/x86/crypto/crc32-pclmul.ko.xz:',
    'kernel/crypto/crc32_generic.ko.xz:',
    'kernel/net/ipv4/udp_tunnel.ko.xz:',
    'kernel/net/ipv6/ip6_udp_tunnel.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz',
    'kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko.xz: kernel/net/ipv6/ip6_udp_tunnel.ko.xz kernel/net/ipv4/udp_tunnel.ko.xz kernel/drivers/infiniband/core/ib_uverbs.ko.xz kernel/drivers/infiniband/core/ib_core.ko.xz',
  ].join('\n') + '\n');
  const r = sh('bash', [SCRIPT, 'modules', moddir]);
  t.is(r.status, 0, r.stderr);
  const order = r.stdout.trim().split('\n').map((p) => path.basename(p).replace(/\.ko.*$/, ''));
  t.deepEqual(order, [
    'failover', 'net_failover', 'virtio_net', '9pnet', '9pnet_virtio', 'netfs', '9p', 'overlay',
    'ib_core', 'ib_uverbs', 'ib_cm', 'iw_cm', 'rdma_cm', 'rdma_ucm',
    'crc32-pclmul', 'crc32_generic', 'udp_tunnel', 'ip6_udp_tunnel', 'rdma_rxe',
  ]);
  // Every module comes after all it depends on.
  for (const line of r.stdout.trim().split('\n')) t.regex(line, /^kernel\/.*\.ko\.xz$/);

  // A module the guest needs that the kernel lacks is an error naming it.
  writeFileSync(path.join(moddir, 'modules.dep'), 'kernel/fs/overlayfs/overlay.ko.xz:\n');
  const missing = sh('bash', [SCRIPT, 'modules', moddir]);
  t.not(missing.status, 0);
  t.regex(missing.stderr, /module virtio_net is neither built in nor in modules\.dep/);
});
