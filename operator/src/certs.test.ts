import { spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import test from 'ava';
import fc from 'fast-check';
import { certificateFacts, issuedBy, splitPemBundle, x509Issuer } from './certs.ts';
import type { KeyAndCertificate } from './certs.ts';

// ---------------------------------------------------------------------------------------------------
// Helpers

const HOUR_MS = 3_600_000;
const now = new Date();
const hoursFromNow = (hours: number): Date => new Date(now.getTime() + hours * HOUR_MS);
const floorToSecond = (date: Date): Date => new Date(Math.floor(date.getTime() / 1000) * 1000);

/** A CA valid for a day around now, and leaves of it valid for an hour around now. */
const authority = (commonName = 'kv-demo-ca'): KeyAndCertificate => x509Issuer.authority(commonName, hoursFromNow(-12), hoursFromNow(12));
const leafOf = (ca: KeyAndCertificate, commonName: string, dnsNames: string[] = [commonName]): KeyAndCertificate =>
  x509Issuer.leaf(ca, { commonName, dnsNames }, hoursFromNow(-1), hoursFromNow(1));

/** The CN of a TLS peer certificate (the types allow a list; ours has one). */
const peerCommonName = (certificate: tls.PeerCertificate): string | null => {
  const cn = certificate.subject?.CN;
  return (Array.isArray(cn) ? cn[0] : cn) ?? null;
};

interface TlsCredentials { ca: string; cert: string; key: string }
const credentials = (ca: string, leaf: KeyAndCertificate): TlsCredentials => ({ ca, cert: leaf.certPem, key: leaf.keyPem });

interface HandshakeResult {
  /** The client certificate's CN as the server saw it (null: no secure connection on the server side). */
  serverSaw: string | null;
  serverError: Error | null;
  /** The server certificate's CN as the client saw it. */
  clientSaw: string | null;
  /** What the server wrote after the handshake ("hello <client CN>"); empty when refused. */
  clientReceived: string;
  clientError: Error | null;
}

/** One mutual-TLS connection on 127.0.0.1: the server asks for and checks a client certificate. */
async function handshake(server: TlsCredentials, client: TlsCredentials): Promise<HandshakeResult> {
  const result: HandshakeResult = { serverSaw: null, serverError: null, clientSaw: null, clientReceived: '', clientError: null };
  const tlsServer = tls.createServer({ ...server, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' });
  const serverDone = new Promise<void>((resolve) => {
    tlsServer.on('secureConnection', (socket) => {
      result.serverSaw = peerCommonName(socket.getPeerCertificate());
      socket.on('error', () => {});
      socket.end(`hello ${result.serverSaw}`, resolve);
    });
    tlsServer.on('tlsClientError', (error) => {
      result.serverError = error;
      resolve();
    });
  });
  await new Promise<void>((resolve) => tlsServer.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = tlsServer.address() as AddressInfo;
    await new Promise<void>((resolve) => {
      const socket = tls.connect({ host: '127.0.0.1', port, ...client, checkServerIdentity: () => undefined });
      socket.setEncoding('utf8');
      socket.on('secureConnect', () => { result.clientSaw = peerCommonName(socket.getPeerCertificate()); });
      socket.on('data', (chunk: string) => { result.clientReceived += chunk; });
      socket.on('error', (error) => { result.clientError = error; });
      socket.on('close', () => resolve());
    });
    await serverDone;
  } finally {
    await new Promise<void>((resolve) => tlsServer.close(() => resolve()));
  }
  return result;
}

// ---------------------------------------------------------------------------------------------------
// Certificates as node parses them

test('authority and leaf parse with X509Certificate: subject and issuer CN, validity to the second, CA flag, SAN, extended key usage', (t) => {
  const caNotBefore = new Date('2024-03-04T05:06:07.890Z');
  const caNotAfter = new Date('2034-03-04T05:06:07.999Z');
  const ca = x509Issuer.authority('kv-demo-ca', caNotBefore, caNotAfter);
  const leafNotBefore = new Date('2025-01-02T03:04:05.678Z');
  const leafNotAfter = new Date('2026-01-02T03:04:05.000Z');
  const leaf = x509Issuer.leaf(ca, { commonName: 'node-1', dnsNames: ['kv-demo-1', 'kv-demo-1.kv-demo.default.svc'] }, leafNotBefore, leafNotAfter);

  t.regex(leaf.keyPem, /^-----BEGIN PRIVATE KEY-----\n/); // PKCS#8
  const caCert = new X509Certificate(ca.certPem);
  const leafCert = new X509Certificate(leaf.certPem);
  t.is(caCert.subject, 'CN=kv-demo-ca');
  t.is(caCert.issuer, 'CN=kv-demo-ca');
  t.true(caCert.ca);
  t.is(caCert.subjectAltName, undefined);
  t.is(leafCert.subject, 'CN=node-1');
  t.is(leafCert.issuer, 'CN=kv-demo-ca');
  t.false(leafCert.ca);
  t.is(leafCert.subjectAltName, 'DNS:kv-demo-1, DNS:kv-demo-1.kv-demo.default.svc');
  t.deepEqual(leafCert.keyUsage, ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']); // node's keyUsage is the extended key usage
  t.is(leafCert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  t.true(leafCert.checkPrivateKey(createPrivateKey(leaf.keyPem)));

  const caFacts = certificateFacts(ca.certPem);
  const leafFacts = certificateFacts(leaf.certPem + ca.certPem); // a bundle: the first certificate
  t.like(caFacts, { commonName: 'kv-demo-ca', issuerCommonName: 'kv-demo-ca', isCa: true, fingerprint256: caCert.fingerprint256 });
  t.like(leafFacts, { commonName: 'node-1', issuerCommonName: 'kv-demo-ca', isCa: false, serialNumber: leafCert.serialNumber });
  t.deepEqual([caFacts.notBefore, caFacts.notAfter], [floorToSecond(caNotBefore), floorToSecond(caNotAfter)]);
  t.deepEqual([leafFacts.notBefore, leafFacts.notAfter], [floorToSecond(leafNotBefore), leafNotAfter]);
  // Serials: 16 random bytes, positive.
  const serials = new Set([caFacts.serialNumber, leafFacts.serialNumber, ...[1, 2, 3].map(() => certificateFacts(leafOf(ca, 'n').certPem).serialNumber)]);
  t.is(serials.size, 5);
  for (const serial of serials) t.regex(serial, /^[0-9A-F]{1,32}$/);
  // Unescaped CNs (X509Certificate.subject escapes them), UTF-8.
  t.is(certificateFacts(x509Issuer.authority('group, "ca"=é+x', caNotBefore, caNotAfter).certPem).commonName, 'group, "ca"=é+x');
});

test('validity: UTCTime through 2049, GeneralizedTime from 2050 and before 1950', (t) => {
  const cases: [string, string][] = [
    ['1950-01-01T00:00:00Z', '2049-12-31T23:59:59Z'],
    ['1949-12-31T23:59:59Z', '2050-01-01T00:00:00Z'],
    ['2000-02-29T12:00:00Z', '9999-12-31T23:59:59Z'],
  ];
  for (const [from, to] of cases) {
    const facts = certificateFacts(x509Issuer.authority('ca', new Date(from), new Date(to)).certPem);
    t.deepEqual([facts.notBefore, facts.notAfter], [new Date(from), new Date(to)], `${from} .. ${to}`);
  }
});

test('bad input is refused: reversed validity, a CA key of another certificate, a non-ASCII DNS name', (t) => {
  const ca = authority();
  t.throws(() => x509Issuer.authority('ca', hoursFromNow(1), hoursFromNow(0)), { instanceOf: RangeError, message: /notBefore must not be after notAfter/ });
  t.throws(() => x509Issuer.authority('ca', new Date(NaN), hoursFromNow(0)), { instanceOf: RangeError });
  t.throws(() => x509Issuer.leaf({ certPem: ca.certPem, keyPem: authority().keyPem }, { commonName: 'n', dnsNames: [] }, now, now), { message: /does not belong to the CA certificate/ });
  t.throws(() => leafOf(ca, 'n', ['bücher.example']), { message: /not printable ASCII/ });
  t.throws(() => certificateFacts('not a certificate'), { message: /no PEM certificate/ });
});

// ---------------------------------------------------------------------------------------------------
// Who issued what

test('issuedBy: checkIssued and verify hold for the issuing CA; another CA (even of the same CN) or an expired window is refused', (t) => {
  const ca = authority();
  const leaf = leafOf(ca, 'node-1');
  const leafCert = new X509Certificate(leaf.certPem);
  const caCert = new X509Certificate(ca.certPem);
  t.true(leafCert.checkIssued(caCert));
  t.true(leafCert.verify(caCert.publicKey));
  t.true(issuedBy(leaf.certPem, ca.certPem, now));

  const other = authority('another-ca');
  const sameName = authority(); // a rotated CA: same CN, new key
  for (const foreign of [other, sameName]) {
    t.false(issuedBy(leaf.certPem, foreign.certPem, now));
    t.false(issuedBy(leafOf(foreign, 'node-1').certPem, ca.certPem, now));
    t.false(leafCert.verify(new X509Certificate(foreign.certPem).publicKey));
  }
  t.false(new X509Certificate(leaf.certPem).checkIssued(new X509Certificate(sameName.certPem))); // the authorityKeyIdentifier tells them apart

  const expired = x509Issuer.leaf(ca, { commonName: 'node-1', dnsNames: [] }, hoursFromNow(-3), hoursFromNow(-2));
  t.false(issuedBy(expired.certPem, ca.certPem, now));
  t.true(issuedBy(expired.certPem, ca.certPem, hoursFromNow(-2.5)));
  t.false(issuedBy(leaf.certPem, ca.certPem, hoursFromNow(-1.5)), 'not yet valid');
  const expiredCa = x509Issuer.authority('old-ca', hoursFromNow(-3), hoursFromNow(-2));
  t.false(issuedBy(x509Issuer.leaf(expiredCa, { commonName: 'n', dnsNames: [] }, hoursFromNow(-1), hoursFromNow(1)).certPem, expiredCa.certPem, now), 'the CA expired');
  t.false(issuedBy(ca.certPem, leaf.certPem, now), 'a leaf issues nothing');
  t.false(issuedBy('garbage', ca.certPem, now));
});

const hasOpenssl = spawnSync('openssl', ['version'], { encoding: 'utf8' }).status === 0;

test('openssl verifies the chain strictly for TLS server and client use and reads the extensions', (t) => {
  if (!hasOpenssl) {
    t.log('SKIPPED: no openssl CLI on PATH');
    t.pass();
    return;
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'derecho-certs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ca = authority();
  writeFileSync(path.join(dir, 'ca.pem'), ca.certPem);
  writeFileSync(path.join(dir, 'leaf.pem'), leafOf(ca, 'node-1', ['kv-demo-1', 'kv-demo-1.kv-demo']).certPem);
  const openssl = (...args: string[]): string => {
    const run = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
    t.is(run.status, 0, `openssl ${args.join(' ')}: ${run.stderr}`);
    return run.stdout;
  };
  t.is(openssl('verify', '-CAfile', 'ca.pem', 'leaf.pem').trim(), 'leaf.pem: OK');
  for (const purpose of ['sslserver', 'sslclient']) t.is(openssl('verify', '-x509_strict', '-purpose', purpose, '-CAfile', 'ca.pem', 'leaf.pem').trim(), 'leaf.pem: OK');
  const caText = openssl('x509', '-noout', '-text', '-in', 'ca.pem');
  t.regex(caText, /Version: 3 \(0x2\)/);
  t.regex(caText, /Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
  t.regex(caText, /Key Usage: critical\s+Certificate Sign, CRL Sign/);
  t.regex(caText, /Subject Key Identifier/);
  const leafText = openssl('x509', '-noout', '-text', '-in', 'leaf.pem');
  t.regex(leafText, /Signature Algorithm: ecdsa-with-SHA256/);
  t.regex(leafText, /Basic Constraints: critical\s+CA:FALSE/);
  t.regex(leafText, /Key Usage: critical\s+Digital Signature\n/);
  t.regex(leafText, /Extended Key Usage: \s*TLS Web Server Authentication, TLS Web Client Authentication/);
  t.regex(leafText, /Subject Alternative Name: \s*DNS:kv-demo-1, DNS:kv-demo-1\.kv-demo/);
  t.regex(leafText, /Authority Key Identifier/);
});

// ---------------------------------------------------------------------------------------------------
// Real TLS

test('mutual TLS on 127.0.0.1: two leaves of one CA connect and see each other\'s CN; a client of another CA is refused', async (t) => {
  t.timeout(20_000);
  const ca = authority();
  const server = credentials(ca.certPem, leafOf(ca, 'node-1'));
  const ok = await handshake(server, credentials(ca.certPem, leafOf(ca, 'node-2')));
  t.is(ok.serverError, null);
  t.is(ok.clientError, null);
  t.is(ok.serverSaw, 'node-2');
  t.is(ok.clientSaw, 'node-1');
  t.is(ok.clientReceived, 'hello node-2');

  for (const rogueCa of [authority('rogue-ca'), authority()]) { // another CA, and one that only shares the CN
    const refused = await handshake(server, credentials(ca.certPem, leafOf(rogueCa, 'node-2')));
    t.is(refused.serverSaw, null);
    t.truthy(refused.serverError);
    // Under TLS 1.3 the client finishes its side before the server checks its certificate: it sees the
    // connection closed, with or without an alert error, and never the server's greeting.
    t.is(refused.clientReceived, '');
  }
});

test('CA rotation: a bundle of two CAs (same CN) is accepted as tls ca and verifies leaves of either', async (t) => {
  t.timeout(20_000);
  const oldCa = x509Issuer.authority('kv-demo-ca', hoursFromNow(-48), hoursFromNow(12));
  const newCa = authority('kv-demo-ca');
  const bundle = oldCa.certPem + newCa.certPem;
  t.deepEqual(splitPemBundle(bundle), [oldCa.certPem, newCa.certPem]);
  t.is(splitPemBundle(`${bundle}${newCa.keyPem}`).length, 2, 'keys are not certificates');
  t.deepEqual(splitPemBundle(''), []);

  const oldLeaf = leafOf(oldCa, 'node-1');
  const newLeaf = leafOf(newCa, 'node-2');
  t.true(issuedBy(oldLeaf.certPem, bundle, now));
  t.true(issuedBy(newLeaf.certPem, bundle, now));
  t.false(issuedBy(leafOf(authority('kv-demo-ca'), 'node-3').certPem, bundle, now));

  const both = await handshake(credentials(bundle, oldLeaf), credentials(bundle, newLeaf));
  t.deepEqual([both.serverSaw, both.clientSaw, both.serverError, both.clientError], ['node-2', 'node-1', null, null]);
  const reversed = await handshake(credentials(bundle, newLeaf), credentials(bundle, oldLeaf));
  t.deepEqual([reversed.serverSaw, reversed.clientSaw], ['node-1', 'node-2']);
  // A server that trusts only the new CA refuses a client still on the old one.
  const onlyNew = await handshake(credentials(newCa.certPem, leafOf(newCa, 'node-3')), credentials(bundle, oldLeaf));
  t.is(onlyNew.serverSaw, null);
});

// ---------------------------------------------------------------------------------------------------
// DER lengths

test('DER lengths: certificates with 0..40 random DNS names of 1..63 characters parse and verify (short, one- and two-byte long forms), and so does a SAN past 64 KiB', (t) => {
  const ca = authority();
  const caCert = new X509Certificate(ca.certPem);
  const dnsName = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789-.'), minLength: 1, maxLength: 63, size: 'max' });
  const commonName = fc.string({ unit: fc.constantFrom(...'abcxyz-019'), minLength: 1, maxLength: 64 });
  const sanLengthForms = new Set<string>();
  fc.assert(fc.property(commonName, fc.array(dnsName, { maxLength: 40, size: 'max' }), (cn, dnsNames) => {
    const leaf = x509Issuer.leaf(ca, { commonName: cn, dnsNames }, hoursFromNow(-1), hoursFromNow(1));
    const cert = new X509Certificate(leaf.certPem);
    const sanBytes = dnsNames.reduce((sum, name) => sum + 2 + name.length, 0); // the GeneralNames SEQUENCE's contents
    if (dnsNames.length) sanLengthForms.add(sanBytes < 0x80 ? 'short' : sanBytes < 0x100 ? '0x81' : '0x82');
    return cert.subject === `CN=${cn}`
      && cert.subjectAltName === (dnsNames.length ? dnsNames.map((name) => `DNS:${name}`).join(', ') : undefined)
      && cert.checkIssued(caCert) && cert.verify(caCert.publicKey);
  }), { numRuns: 150, examples: [['n', []], ['n', ['a']], ['n', ['x'.repeat(63), 'y'.repeat(63)]], ['n', Array(5).fill('z'.repeat(63))]] });
  t.deepEqual([...sanLengthForms].sort(), ['0x81', '0x82', 'short'], 'SAN lengths in all three forms');

  // 1100 names of 63 characters: the SAN, the extensions, the TBS and the certificate need 3-byte lengths.
  const many = Array.from({ length: 1100 }, (_, i) => `${String(i).padStart(4, '0')}${'x'.repeat(59)}`);
  const big = new X509Certificate(x509Issuer.leaf(ca, { commonName: 'big', dnsNames: many }, hoursFromNow(-1), hoursFromNow(1)).certPem);
  t.true(big.raw.length > 65_536);
  t.is(big.raw[1], 0x83);
  t.is(big.subjectAltName, many.map((name) => `DNS:${name}`).join(', '));
  t.true(big.verify(caCert.publicKey));
});
