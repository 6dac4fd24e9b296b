// The client API's protection (agent config `api`, ADR 0015): TLS with the member's certificate, bearer
// tokens under /v1/, open probes and /status, and both re-read at run time (a renewed certificate, a
// rotated token) without a restart. A one-member group in this process over loopback.

import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import test from 'ava';
import { DerechoClient, DerechoError } from '../client/client.ts';
import { ConfigError } from '../config/errors.ts';
import { loadAgentConfig } from '../config/load.ts';
import { httpRequest } from '../util/http-request.ts';
import { x509Issuer } from '../../../operator/src/certs.ts';
import { Agent } from './agent.ts';
import { parseTokens } from './api-credentials.ts';
import { silentLogger } from './logger.ts';
import { groupConfigs, until } from './test-group.ts';

const manifest = `
apiVersion: derecho.dev/v1alpha1
kind: DerechoGroup
metadata: { name: api }
spec:
  members: 1
  subgroups:
    - { name: kv, type: kv, minNodesPerShard: 1, maxNodesPerShard: 1 }
  tls: { mode: hmac }
  timing: { tickMs: 20, heartbeatMs: 40, suspectMs: 400 }
`;

const TOKEN_A = 'token-a-0123456789abcdef';
const TOKEN_B = 'token-b-0123456789abcdef';
const reloadMs = 150;

function pki() {
  const now = Date.now();
  const from = new Date(now - 60_000);
  const to = new Date(now + 86_400_000);
  const ca = x509Issuer.authority('api-test-ca', from, to);
  const leaf = () => x509Issuer.leaf(ca, { commonName: 'node-1', dnsNames: ['api-1.api-peers.ns.svc', 'localhost'] }, from, to);
  return { ca, leaf };
}

async function secureAgent(t: { teardown(f: () => void | Promise<void>): void }) {
  const { dir, files, httpPorts } = await groupConfigs(t, manifest, 1, 'derecho-api-');
  const { ca, leaf } = pki();
  const first = leaf();
  const file = (name: string, text: string) => {
    fs.writeFileSync(path.join(dir, `${name}.tmp`), text);
    fs.renameSync(path.join(dir, `${name}.tmp`), path.join(dir, name));
    return path.join(dir, name);
  };
  const api = { tlsCertFile: file('api.crt', first.certPem), tlsKeyFile: file('api.key', first.keyPem), tokenFile: file('token', `# rotation: both\n${TOKEN_A}\n${TOKEN_B}\n`) };
  const config = JSON.parse(fs.readFileSync(files[0]!, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(files[0]!, JSON.stringify({ ...config, api }));
  const agent = await Agent.create(loadAgentConfig({ file: files[0]!, env: {} }), { log: silentLogger, tlsReloadMs: reloadMs });
  t.teardown(() => agent.close());
  const base = `https://127.0.0.1:${httpPorts[0]}`;
  const call = (method: string, p: string, options: { token?: string; body?: string; servername?: string; ca?: string } = {}) => httpRequest({
    url: base + p, method, ca: options.ca ?? ca.certPem, servername: options.servername ?? 'api-1.api-peers.ns.svc', timeoutMs: 10_000,
    headers: options.token !== undefined ? { authorization: `Bearer ${options.token}` } : {},
    ...(options.body !== undefined ? { body: options.body } : {}),
  });
  await until('the member is ready', async () => (await call('GET', '/readyz').catch(() => null))?.status === 200, 20_000);
  return { agent, base, port: httpPorts[0]!, ca, leaf, file, call, first };
}

test.serial('the client API is served over TLS and /v1/ needs one of the tokens; probes, /metrics and /status stay open', async (t) => {
  const { call, port, ca } = await secureAgent(t);
  for (const p of ['/healthz', '/readyz', '/status', '/metrics']) t.is((await call('GET', p)).status, 200, p);

  const none = await call('PUT', '/v1/kv/kv/k', { body: 'v' });
  t.is(none.status, 401);
  t.is(none.headers['www-authenticate'], 'Bearer realm="derecho"');
  t.regex(JSON.parse(none.body.toString()).error as string, /needs a bearer token/);
  const wrong = await call('PUT', '/v1/kv/kv/k', { body: 'v', token: 'not-the-token-0123456789' });
  t.is(wrong.status, 401);
  t.regex(JSON.parse(wrong.body.toString()).error as string, /not one this group accepts/);
  t.is((await call('GET', '/v1/subgroups')).status, 401, 'every /v1/ route, reads too');
  t.is((await call('PUT', '/v1/kv/kv/k', { body: 'by a', token: TOKEN_A })).status, 200);
  const byB = await call('GET', '/v1/kv/kv/k', { token: TOKEN_B });
  t.is(byB.status, 200, 'either token of a rotation');
  t.is((JSON.parse(byB.body.toString()) as { value: string }).value, 'by a');

  // Plain HTTP to the TLS port gets no answer from the API.
  const plain = await new Promise<string>((resolve) => {
    http.get({ host: '127.0.0.1', port, path: '/v1/kv/kv/k' }, (res) => resolve(`HTTP ${res.statusCode}`)).on('error', (e) => resolve(`error ${e.message}`));
  });
  t.false(plain === 'HTTP 200', plain);
  // A client that does not trust the group's CA refuses the server.
  const other = x509Issuer.authority('another-ca', new Date(Date.now() - 60_000), new Date(Date.now() + 86_400_000));
  const distrust = await call('GET', '/readyz', { ca: other.certPem }).then(() => 'accepted', (e: unknown) => String((e as { code?: string }).code));
  t.regex(distrust, /UNABLE_TO_VERIFY|SELF_SIGNED|CERT/);
  // ... and so does one asking for a name the certificate does not carry.
  const wrongName = await call('GET', '/readyz', { servername: 'api-2.api-peers.ns.svc' }).then(() => 'accepted', (e: unknown) => String((e as { code?: string }).code));
  t.is(wrongName, 'ERR_TLS_CERT_ALTNAME_INVALID');

  const status = JSON.parse((await call('GET', '/status')).body.toString()) as { api: { tls: boolean; tokenRequired: boolean; tokens: number; refused: number } };
  t.like(status.api, { tls: true, tokenRequired: true, tokens: 2 });
  t.true(status.api.refused >= 3);

  // The typed client: token, CA, and the member's name (here through "localhost", a name of every member certificate).
  const client = new DerechoClient({ endpoints: [`https://localhost:${port}`], token: TOKEN_A, ca: ca.certPem, rounds: 1 });
  t.teardown(() => client.close());
  t.is((await client.kv('kv').put('typed', 'yes')).persisted, true);
  t.is((await client.kv('kv').get('typed'))?.value, 'yes');
  const tokenless = new DerechoClient({ endpoints: [`https://localhost:${port}`], ca: ca.certPem, rounds: 1 });
  t.teardown(() => tokenless.close());
  const refused = await t.throwsAsync(tokenless.kv('kv').get('typed'), { instanceOf: DerechoError });
  t.is(refused?.status, 401);
  const untrusting = new DerechoClient({ endpoints: [`https://localhost:${port}`], token: TOKEN_A, ca: other.certPem, rounds: 3, retryPauseMs: 1000 });
  t.teardown(() => untrusting.close());
  const t0 = Date.now();
  const untrusted = await t.throwsAsync(untrusting.kv('kv').get('typed'), { instanceOf: DerechoError });
  t.regex(untrusted?.message ?? '', /certificate is not trusted/);
  t.true(Date.now() - t0 < 1000, 'a certificate refusal is not retried');
});

test.serial('a rotated token and a renewed certificate apply without a restart; a bad update keeps what is in force', async (t) => {
  const { call, file, leaf, first, agent } = await secureAgent(t);
  const serialOf = async (): Promise<string> => {
    const tls = await import('node:tls');
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port: agent.httpAddress.port, rejectUnauthorized: false }, () => {
        resolve(socket.getPeerCertificate().serialNumber);
        socket.destroy();
      });
      socket.on('error', reject);
    });
  };
  t.is(await serialOf(), new X509Certificate(first.certPem).serialNumber);

  // Rotation, step 2: only B is left.
  file('token', `${TOKEN_B}\n`);
  await until('token A is refused', async () => (await call('GET', '/v1/subgroups', { token: TOKEN_A })).status === 401, 5_000);
  t.is((await call('GET', '/v1/subgroups', { token: TOKEN_B })).status, 200);

  // A token file caught empty (or too short) is refused: B still works, /status says why.
  file('token', 'short\n');
  await until('the refusal is reported', async () => {
    const api = (JSON.parse((await call('GET', '/status')).body.toString()) as { api: { lastReloadError: string | null } }).api;
    return api.lastReloadError !== null && /at least 16/.test(api.lastReloadError);
  }, 5_000);
  t.is((await call('GET', '/v1/subgroups', { token: TOKEN_B })).status, 200);

  // A renewed certificate is served to new connections.
  const renewed = leaf();
  file('api.key', renewed.keyPem);
  file('api.crt', renewed.certPem);
  const expected = new X509Certificate(renewed.certPem).serialNumber;
  await until('the renewed certificate is served', async () => (await serialOf()) === expected, 5_000);
  // A key of another certificate is refused; the renewed pair stays in use.
  file('api.key', generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString());
  await until('the mismatched key is reported', async () => {
    const api = (JSON.parse((await call('GET', '/status')).body.toString()) as { api: { lastReloadError: string | null } }).api;
    return api.lastReloadError !== null && /api\.crt/.test(api.lastReloadError);
  }, 5_000);
  t.is(await serialOf(), expected);
  t.is((await call('GET', '/readyz')).status, 200);
});

test('token files: one per line, comments and blank lines skipped, short or missing tokens refused with the file named', (t) => {
  t.deepEqual(parseTokens(`# a comment\n\n${TOKEN_A}\r\n  ${TOKEN_B}  \n`, 'f'), [TOKEN_A, TOKEN_B]);
  t.throws(() => parseTokens('# nothing\n', '/etc/token'), { message: '/etc/token holds no token (one per line)' });
  t.throws(() => parseTokens(`${TOKEN_A}\nshort\n`, '/etc/token'), { message: '/etc/token: token 2 has 5 characters; at least 16' });
});

test('an agent whose token file cannot be read does not start, and says which file', async (t) => {
  const { dir, files } = await groupConfigs(t, manifest, 1, 'derecho-api-bad-');
  const config = JSON.parse(fs.readFileSync(files[0]!, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(files[0]!, JSON.stringify({ ...config, api: { tokenFile: path.join(dir, 'missing-token') } }));
  const error = await t.throwsAsync(Agent.create(loadAgentConfig({ file: files[0]!, env: {} }), { log: silentLogger }), { instanceOf: ConfigError });
  t.regex(error?.message ?? '', /api: .*missing-token/);
  fs.writeFileSync(files[0]!, JSON.stringify({ ...config, api: { tlsCertFile: path.join(dir, 'x.crt') } }));
  const schema = t.throws(() => loadAgentConfig({ file: files[0]!, env: {} }), { instanceOf: ConfigError });
  t.regex(schema?.message ?? '', /api\.tlsKeyFile.*is required with the other/);
});

test.serial('the derecho CLI reaches a protected group with --endpoint, --token-file and --ca-file', async (t) => {
  const { execFile } = await import('node:child_process');
  const { port, ca, file } = await secureAgent(t);
  const caFile = file('ca.crt', ca.certPem);
  const tokenFile = file('client-token', `${TOKEN_B}\n`);
  const bin = new URL('../../../bin/derecho.js', import.meta.url).pathname;
  const cli = (...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> => new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { timeout: 60_000, env: { ...process.env, DERECHO_TOKEN: '' } }, (error, stdout, stderr) => {
      resolve({ code: error ? Number((error as { code?: unknown }).code ?? 1) : 0, stdout, stderr });
    });
  });
  const endpoint = `https://localhost:${port}`;
  const put = await cli('kv', 'put', 'cli-key', 'from the cli', '--endpoint', endpoint, '--token-file', tokenFile, '--ca-file', caFile);
  t.is(put.code, 0, put.stderr);
  t.regex(put.stdout, /^put cli-key: version \d+\.\d+ \(kv shard 0, persisted\)/);
  const get = await cli('kv', 'get', 'cli-key', '--endpoint', endpoint, '--token', TOKEN_A, '--ca-file', caFile);
  t.is(get.stdout.trim(), 'from the cli');
  const noToken = await cli('kv', 'get', 'cli-key', '--endpoint', endpoint, '--ca-file', caFile);
  t.is(noToken.code, 1);
  t.regex(noToken.stderr, /needs a bearer token/);
  const noCa = await cli('kv', 'get', 'cli-key', '--endpoint', endpoint, '--token', TOKEN_A);
  t.is(noCa.code, 1);
  t.regex(noCa.stderr, /certificate is not trusted/);
  const misuse = await cli('kv', 'get', 'cli-key', '--token', TOKEN_A);
  t.is(misuse.code, 2);
  t.regex(misuse.stderr, /--token goes with --endpoint/);
});

test.serial('closing an agent does not wait for a client stuck before its TLS handshake (an HTTPS server tracks HTTP connections only)', async (t) => {
  const { agent, port } = await secureAgent(t);
  const net = await import('node:net');
  // A client that connects and says nothing (a probe cut off mid-way, a scanner): no HTTP connection yet.
  const silent = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve) => silent.once('connect', () => resolve()));
  t.teardown(() => silent.destroy());
  const t0 = Date.now();
  const closed = await Promise.race([agent.close().then(() => 'closed'), new Promise((r) => setTimeout(() => r('still waiting'), 10_000))]);
  t.is(closed, 'closed', 'the agent exits instead of waiting out the TLS handshake timeout (120 s)');
  t.log(`closed in ${Date.now() - t0} ms`);
});
