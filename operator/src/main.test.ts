// The operator's command line (operator/src/main.ts parseFlags): defaults, --namespace lists, and the
// errors a bad flag gets. The chart's rendered arguments are parsed in test/cluster/helm.test.ts.

import test from 'ava';
import { DEFAULT_OPTIONS } from './reconcile.ts';
import { UsageError, parseFlags, usage } from './main.ts';

test('defaults: all namespaces, leader election, ports 8081 and 8082', (t) => {
  t.like(parseFlags([]), {
    namespaces: [], leaderElect: true, leaseName: 'derecho-operator', metricsPort: 8081, healthPort: 8082,
    workers: 4, logLevel: 'info', rdmaResourceName: DEFAULT_OPTIONS.rdmaResourceName, agentImage: DEFAULT_OPTIONS.agentImage,
  });
});

test('--namespace takes one namespace, a comma-separated list, and may be repeated (duplicates once, in order)', (t) => {
  t.deepEqual(parseFlags(['--namespace', 'apps']).namespaces, ['apps']);
  t.deepEqual(parseFlags(['--namespace=apps']).namespaces, ['apps']);
  t.deepEqual(parseFlags(['-n', 'apps']).namespaces, ['apps']);
  t.deepEqual(parseFlags(['--namespace', 'a,b']).namespaces, ['a', 'b']);
  t.deepEqual(parseFlags(['--namespace', ' a , b ']).namespaces, ['a', 'b'], 'spaces around names are ignored');
  t.deepEqual(parseFlags(['--namespace', 'a', '--namespace', 'b,c', '-n', 'a']).namespaces, ['a', 'b', 'c']);
  t.deepEqual(parseFlags(['--namespace=a,b', '--namespace', 'b']).namespaces, ['a', 'b']);
  t.deepEqual(parseFlags(['--namespace', '']).namespaces, [], 'an empty value: all namespaces (as before)');
  t.deepEqual(parseFlags(['--namespace', '', '--namespace', 'a']).namespaces, ['a']);
  t.deepEqual(parseFlags(['--all-namespaces']).namespaces, []);
  t.deepEqual(parseFlags(['--namespace', `${'x'.repeat(63)}`]).namespaces, ['x'.repeat(63)]);
});

test('--namespace refuses names that are not namespaces, empty entries, and --all-namespaces beside a list', (t) => {
  const cases: [string[], RegExp][] = [
    [['--namespace', 'a,,b'], /--namespace: "" \(in "a,,b"\) is not a namespace name/],
    [['--namespace', 'a,'], /--namespace: "" \(in "a,"\) is not a namespace name/],
    [['--namespace', 'Apps'], /"Apps" .* is not a namespace name/],
    [['--namespace', 'a_b'], /"a_b" .* is not a namespace name/],
    [['--namespace', 'a b'], /"a b" .* is not a namespace name/],
    [['--namespace', '-a'], /"-a" .* is not a namespace name/],
    [['--namespace', 'x'.repeat(64)], /is not a namespace name/],
    [['--namespace'], /--namespace needs a value/],
    [['--namespace', 'a', '--all-namespaces'], /--all-namespaces contradicts --namespace a/],
    [['--all-namespaces', '-n', 'a,b'], /--all-namespaces contradicts --namespace a,b/],
  ];
  for (const [argv, message] of cases) {
    const error = t.throws(() => parseFlags(argv), { instanceOf: UsageError }, argv.join(' '));
    if (error) t.regex(error.message, message, argv.join(' '));
  }
});

test('other flags, and usage() names the namespace list', (t) => {
  t.like(parseFlags(['--leader-elect=false', '--metrics-port', '0', '--health-port', '0', '--workers', '8', '--log-level', 'debug']),
    { leaderElect: false, metricsPort: 0, healthPort: 0, workers: 8, logLevel: 'debug' });
  t.throws(() => parseFlags(['--workers', '0']), { instanceOf: UsageError, message: /--workers/ });
  t.throws(() => parseFlags(['--watch-namespace', 'a']), { instanceOf: UsageError, message: /unknown argument "--watch-namespace"/ });
  t.regex(usage(), /--namespace NS\[,NS\.\.\.\]/);
});
