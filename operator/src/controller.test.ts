// The controller's machinery without a cluster: the work queue, and the informer's watch handling against
// a fake API server (list, watch from the list's resourceVersion, a silent watch dropped and resumed, 410
// Gone -> relist, an HTTP error -> restart after a backoff); a list of namespaces watched one by one, with
// no request about any other namespace. The controller end to end against a real kube-apiserver is
// test/cluster/operator.test.ts (and, under the Helm chart's RBAC, test/cluster/helm.test.ts).

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import test from 'ava';
import { KubeConfig } from '@kubernetes/client-node';
import { silentLogger } from '../../node-agent/src/agent/logger.ts';
import { Controller, OWNED_TYPES, ResourceInformer, ScopedInformer, WorkQueue, defaultStatusUrl, memberIdentity, resourcePath } from './controller.ts';
import type { InformerEvent } from './controller.ts';
import type { KubeObject, ObservedPod } from './kube.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));


/** Starts `server` on a loopback port (closed at teardown) and returns a KubeConfig pointing at it. */
async function listenAsApiServer(t: { teardown(f: () => void): void }, server: http.Server): Promise<KubeConfig> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'fake', server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: true }],
    users: [{ name: 'u', token: 'secret-token' }],
    contexts: [{ name: 'c', cluster: 'fake', user: 'u' }],
    currentContext: 'c',
  });
  return kc;
}

test('work queue: a key is queued once, never processed twice at once, and re-queued when added while processing', async (t) => {
  const queue = new WorkQueue();
  queue.add('ns/a');
  queue.add('ns/b');
  queue.add('ns/a');
  t.is(queue.length, 2);
  const first = await queue.get();
  t.is(first, 'ns/a');
  queue.add('ns/a'); // while processing: marked dirty, not queued
  t.is(queue.length, 1);
  t.is(await queue.get(), 'ns/b');
  queue.done('ns/b');
  t.is(queue.length, 0);
  queue.done('ns/a'); // dirty: queued again
  t.is(queue.length, 1);
  t.is(await queue.get(), 'ns/a');
  queue.done('ns/a');
  t.is(queue.length, 0);
});

test('work queue: delayed adds keep the earliest deadline; retries back off per key until forget()', async (t) => {
  const queue = new WorkQueue({ baseDelayMs: 20, maxDelayMs: 80 });
  // (Deadlines far apart: a loaded machine delays the timer, never by seconds.)
  queue.addAfter('k', 5000);
  queue.addAfter('k', 30);
  queue.addAfter('k', 10_000);
  const t0 = Date.now();
  t.is(await queue.get(), 'k');
  t.true(Date.now() - t0 < 2500, 'the earliest deadline won');
  queue.done('k');
  t.is(queue.addRateLimited('k'), 20);
  t.is(queue.addRateLimited('k'), 40);
  t.is(queue.addRateLimited('k'), 80);
  t.is(queue.addRateLimited('k'), 80, 'capped');
  t.is(queue.retries('k'), 4);
  queue.forget('k');
  t.is(queue.retries('k'), 0);
  t.is(await queue.get(), 'k');
  queue.shutDown();
});

test('work queue: bounded, and shutDown wakes the workers with null', async (t) => {
  const queue = new WorkQueue({ maxLength: 2 });
  queue.add('a');
  queue.add('b');
  queue.add('c');
  t.is(queue.length, 2);
  t.is(queue.dropped, 1);
  await queue.get();
  await queue.get();
  const waiting = queue.get();
  queue.shutDown();
  t.is(await waiting, null);
  t.is(await queue.get(), null);
  queue.add('d');
  t.is(queue.length, 0);
});

test('resource paths and the default /status URL (pod IP and the container port named http)', (t) => {
  t.is(resourcePath({ apiVersion: 'v1', plural: 'pods' }, 'ns', 'p', 'status'), '/api/v1/namespaces/ns/pods/p/status');
  t.is(resourcePath({ apiVersion: 'policy/v1', plural: 'poddisruptionbudgets' }), '/apis/policy/v1/poddisruptionbudgets');
  const pod = (ip?: string, port?: number): ObservedPod => ({
    apiVersion: 'v1', kind: 'Pod', metadata: { name: 'g-1' },
    spec: { containers: [{ name: 'agent', ...(port ? { ports: [{ name: 'http', containerPort: port }] } : {}) } as never] },
    ...(ip ? { status: { podIP: ip } } : {}),
  });
  const url = defaultStatusUrl();
  t.is(url(pod('10.1.2.3', 9000), 1), 'http://10.1.2.3:9000/status');
  t.is(url(pod('fd00::5'), 1), 'http://[fd00::5]:8080/status');
  t.is(url(pod(), 1), null);
});

// ---------------------------------------------------------------------------------------------------
// The informer against a fake API server.

interface FakeWatch {
  query: URLSearchParams;
  res: http.ServerResponse;
}

function configMap(name: string, rv: string): KubeObject {
  return { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: 'ns', resourceVersion: rv, uid: `uid-${name}`, labels: { app: 'x' } } };
}

test('informer: lists, watches from the list\'s resourceVersion, resumes a silent watch, relists on 410, restarts after an error', async (t) => {
  t.timeout(30_000);
  let listItems = [configMap('a', '5')];
  let listRv = '10';
  const lists: URLSearchParams[] = [];
  const watches: FakeWatch[] = [];
  const onWatch: ((w: FakeWatch) => void)[] = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname !== '/api/v1/namespaces/ns/configmaps') {
      res.writeHead(404).end();
      return;
    }
    if (url.searchParams.get('watch') !== 'true') {
      lists.push(url.searchParams);
      // List items carry no apiVersion/kind, as the real API server's do not.
      const items = listItems.map(({ apiVersion: _a, kind: _k, ...rest }) => rest);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'ConfigMapList', apiVersion: 'v1', metadata: { resourceVersion: listRv }, items }));
      return;
    }
    const w = { query: url.searchParams, res };
    watches.push(w);
    const handler = onWatch.shift();
    if (handler) handler(w);
    else res.writeHead(200, { 'content-type': 'application/json' }); // silent
  });
  const kc = await listenAsApiServer(t, server);
  const events: string[] = [];
  const informer = new ResourceInformer(kc, { apiVersion: 'v1', kind: 'ConfigMap', plural: 'configmaps' }, {
    namespace: 'ns',
    labelSelector: 'app',
    log: silentLogger,
    watchTimeoutSeconds: [1, 1],
    watchIdleSlackMs: 300,
    onEvent: (event: InformerEvent, object) => events.push(`${event} ${object.kind}/${object.metadata.name}@${object.metadata.resourceVersion ?? ''}`),
  });
  const waitUntil = async (what: string, cond: () => boolean, ms = 10_000): Promise<void> => {
    const deadline = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; events ${JSON.stringify(events)}, watches ${watches.length}`);
      await sleep(20);
    }
  };

  // Watch 1: one event, then silence: dropped after timeoutSeconds + slack, resumed from its resourceVersion.
  onWatch.push((w) => {
    w.res.writeHead(200, { 'content-type': 'application/json' });
    w.res.write(`${JSON.stringify({ type: 'ADDED', object: configMap('b', '11') })}\n`);
  });
  // Watch 2: 410 Gone as an ERROR event: relist.
  onWatch.push((w) => {
    listItems = [configMap('a', '5'), configMap('c', '19')];
    listRv = '20';
    w.res.writeHead(200, { 'content-type': 'application/json' });
    w.res.end(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 410, reason: 'Expired' } })}\n`);
  });
  // Watch 3: an HTTP error: the informer restarts after a backoff and watches from the same resourceVersion.
  onWatch.push((w) => {
    w.res.writeHead(500, { 'content-type': 'application/json' }).end('{"kind":"Status","message":"boom"}');
  });
  // Watch 4: a change.
  onWatch.push((w) => {
    w.res.writeHead(200, { 'content-type': 'application/json' });
    w.res.write(`${JSON.stringify({ type: 'MODIFIED', object: configMap('a', '21') })}\n`);
  });

  await informer.start();
  t.true(informer.synced);
  t.is(lists[0]?.get('labelSelector'), 'app');
  t.is(lists[0]?.get('limit'), '500');
  await waitUntil('watch 4', () => events.includes('update ConfigMap/a@21'));
  t.deepEqual(events, ['add ConfigMap/a@5', 'add ConfigMap/b@11', 'delete ConfigMap/b@11', 'add ConfigMap/c@19', 'update ConfigMap/a@21']);
  t.is(lists.length, 2, 'one relist, after the 410');
  t.deepEqual(watches.slice(0, 4).map((w) => w.query.get('resourceVersion')), ['10', '11', '20', '20']);
  for (const w of watches) {
    t.is(w.query.get('allowWatchBookmarks'), 'true');
    t.is(w.query.get('timeoutSeconds'), '1');
    t.is(w.query.get('labelSelector'), 'app');
  }
  t.deepEqual(informer.list('ns').map((o) => `${o.kind}/${o.metadata.name}`).sort(), ['ConfigMap/a', 'ConfigMap/c'], 'the cache, with kinds filled in');
  t.is(informer.get('a', 'ns')?.metadata.resourceVersion, '21');
  await informer.stop();
  const after = watches.length;
  await sleep(1500);
  t.is(watches.length, after, 'no watch after stop()');
});

// ---------------------------------------------------------------------------------------------------
// A list of namespaces: one list and one watch per namespace and resource type, nothing else.

/** A fake API server answering every list with `items(path)` (or `refuse(path)`'s status) and holding every watch open, silent. */
async function recordingServer(t: import('ava').ExecutionContext, opts: { items?: (path: string) => KubeObject[]; refuse?: (path: string) => number | null } = {}) {
  const requests: { method: string; path: string; watch: boolean }[] = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const watch = url.searchParams.get('watch') === 'true';
    requests.push({ method: req.method ?? '', path: url.pathname, watch });
    const refused = opts.refuse?.(url.pathname) ?? null;
    if (refused !== null) {
      res.writeHead(refused, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', code: refused, message: `${url.pathname} is forbidden` }));
      return;
    }
    if (watch) {
      res.writeHead(200, { 'content-type': 'application/json' });
      return;
    }
    const items = (opts.items?.(url.pathname) ?? []).map(({ apiVersion: _a, kind: _k, ...rest }) => rest);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'List', apiVersion: 'v1', metadata: { resourceVersion: '7' }, items }));
  });
  const kc = await listenAsApiServer(t, server);
  return { kc, requests };
}

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await sleep(20);
}

const inNamespace = (ns: string, name: string, rv = '5'): KubeObject =>
  ({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: ns, resourceVersion: rv, uid: `uid-${ns}-${name}`, labels: { app: 'x' } } });

test('scoped informer: a list and a watch per namespace, one cache over them, objects looked up in their namespace\'s', async (t) => {
  t.timeout(30_000);
  const { kc, requests } = await recordingServer(t, {
    items: (path) => (path === '/api/v1/namespaces/a/configmaps' ? [inNamespace('a', 'one')] : path === '/api/v1/namespaces/b/configmaps' ? [inNamespace('b', 'one', '6'), inNamespace('b', 'two', '6')] : []),
  });
  const events: string[] = [];
  const informer = new ScopedInformer(kc, { apiVersion: 'v1', kind: 'ConfigMap', plural: 'configmaps' }, {
    namespaces: ['a', 'b', 'a'], labelSelector: 'app', log: silentLogger, watchTimeoutSeconds: [60, 60],
    onEvent: (event: InformerEvent, object) => events.push(`${event} ${object.metadata.namespace ?? ''}/${object.metadata.name}`),
  });
  t.teardown(() => informer.stop());
  t.deepEqual(informer.namespaces, ['a', 'b']);
  await informer.start();
  t.true(informer.synced);
  t.deepEqual(informer.unsynced(), []);
  await until(() => requests.filter((r) => r.watch).length >= 2);
  t.deepEqual(requests.map((r) => `${r.method} ${r.path}${r.watch ? ' watch' : ''}`).sort(), [
    'GET /api/v1/namespaces/a/configmaps', 'GET /api/v1/namespaces/a/configmaps watch',
    'GET /api/v1/namespaces/b/configmaps', 'GET /api/v1/namespaces/b/configmaps watch',
  ], 'one list and one watch per namespace, none cluster-wide');
  t.deepEqual(events.sort(), ['add a/one', 'add b/one', 'add b/two']);
  t.deepEqual(informer.list().map((o) => `${o.metadata.namespace ?? ''}/${o.metadata.name}`).sort(), ['a/one', 'b/one', 'b/two']);
  t.deepEqual(informer.list('b').map((o) => o.metadata.name).sort(), ['one', 'two']);
  t.deepEqual(informer.list('c'), [], 'a namespace not watched has nothing');
  t.is(informer.get('one', 'a')?.metadata.uid, 'uid-a-one');
  t.is(informer.get('one', 'b')?.metadata.uid, 'uid-b-one');
  t.is(informer.get('one', 'c'), undefined);
  t.is(informer.latestResourceVersion('a'), '7');
  t.is(informer.latestResourceVersion('c'), undefined);
  await informer.stop();

  // Without a list: one informer over all namespaces.
  requests.length = 0;
  const all = new ScopedInformer(kc, { apiVersion: 'v1', kind: 'ConfigMap', plural: 'configmaps' }, { log: silentLogger, watchTimeoutSeconds: [60, 60], onEvent: () => {} });
  t.teardown(() => all.stop());
  t.is(all.namespaces, null);
  await all.start();
  await until(() => requests.some((r) => r.watch));
  t.deepEqual(requests.map((r) => `${r.path}${r.watch ? ' watch' : ''}`).sort(), ['/api/v1/configmaps', '/api/v1/configmaps watch']);
  await all.stop();
});

test('controller with namespaces a, b: every list and watch names one of them; one refused namespace keeps it unready and says which', async (t) => {
  t.timeout(30_000);
  const group = { apiVersion: 'derecho.dev/v1alpha1', kind: 'DerechoGroup', metadata: { name: 'g', namespace: 'a', uid: 'uid-g', resourceVersion: '3', generation: 1 } } as KubeObject;
  const { kc, requests } = await recordingServer(t, {
    items: (path) => (path === '/apis/derecho.dev/v1alpha1/namespaces/a/derechogroups' ? [group] : []),
    refuse: (path) => (path === '/api/v1/namespaces/b/secrets' ? 403 : null),
  });
  const controller = new Controller({ kubeConfig: kc, namespaces: ['a', 'b'], log: silentLogger, watchTimeoutSeconds: [60, 60] });
  t.teardown(() => controller.stop());
  t.is(controller.scope(), 'a,b');
  await controller.start();
  const types = Object.values(OWNED_TYPES).length + 1;
  await until(() => /secrets in b \(.*403/.test(controller.notReadyReason() ?? '') && requests.filter((r) => r.watch).length >= types * 2 - 1);
  t.regex(controller.notReadyReason() ?? '', /^caches not synced: secrets in b \(.*HTTP 403.*forbidden.*\)$/, 'only the refused namespace\'s Secrets are pending, by name');
  t.false(controller.synced());
  const lists = requests.filter((r) => !r.watch);
  t.true(lists.length >= types * 2);
  const outside = requests.filter((r) => !/^\/(api\/v1|apis\/[^/]+\/[^/]+)\/namespaces\/(a|b)\/[a-z]+$/.test(r.path));
  t.deepEqual(outside, [], 'no request outside namespaces a and b');
  t.true(requests.every((r) => r.method === 'GET'), 'nothing written before it leads');
  for (const ns of ['a', 'b']) {
    for (const plural of ['derechogroups', ...Object.values(OWNED_TYPES).map((type) => type.plural)]) {
      t.true(lists.some((r) => r.path.endsWith(`/namespaces/${ns}/${plural}`)), `${plural} listed in ${ns}`);
    }
  }
  await controller.stop();
});

test('memberIdentity: a member is its pod\'s DNS name in the certificate, or CN node-<id> (a user\'s certificates without names); nobody else', async (t) => {
  const { x509Issuer } = await import('./certs.ts');
  const { X509Certificate } = await import('node:crypto');
  const now = Date.now();
  const ca = x509Issuer.authority('ca', new Date(now - 60_000), new Date(now + 3_600_000));
  const peer = (commonName: string, dnsNames: string[]) => {
    const x = new X509Certificate(x509Issuer.leaf(ca, { commonName, dnsNames }, new Date(now - 60_000), new Date(now + 3_600_000)).certPem);
    const legacy = x.toLegacyObject();
    return { ...legacy, subject: { CN: commonName } } as unknown as import('node:tls').PeerCertificate;
  };
  const dns = 'g-2.g-peers.ns.svc';
  t.is(memberIdentity(dns, 2)('10.0.0.2', peer('node-2', [dns])), undefined);
  t.is(memberIdentity(dns, 2)('10.0.0.2', peer('node-2', [])), undefined, 'no DNS name, CN node-2');
  t.is(memberIdentity(dns, 2)('10.0.0.2', peer('anything', [dns])), undefined, 'the DNS name whatever the CN');
  t.regex(memberIdentity(dns, 3)('10.0.0.2', peer('node-2', []))?.message ?? '', /not node 3's: .*its CN is "node-2"/);
  t.truthy(memberIdentity(dns, 2)('10.0.0.2', peer('node-22', ['g-22.g-peers.ns.svc'])));
});
