// A minimal X.509 v3 certificate issuer on node:crypto (RFC 5280), so that the operator can mint a
// group CA and per-member TLS certificates itself: EC P-256 keys, ecdsa-with-SHA256 signatures.
// The DER encoder below covers just what these certificates need (X.690 definite-length encoding).

import { X509Certificate, createHash, createPrivateKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import type { KeyObject } from 'node:crypto';

export interface KeyAndCertificate { certPem: string; keyPem: string }
export interface LeafSubject { commonName: string; dnsNames: string[] }
export interface CertificateIssuer {
  /** A self-signed CA certificate (basicConstraints CA:TRUE pathLen 0, keyCertSign+cRLSign) valid [notBefore, notAfter]. */
  authority(commonName: string, notBefore: Date, notAfter: Date): KeyAndCertificate;
  /** A leaf for TLS server AND client use (extKeyUsage serverAuth+clientAuth, keyUsage digitalSignature, CA:FALSE, SAN dNSName list), signed by `ca`. */
  leaf(ca: KeyAndCertificate, subject: LeafSubject, notBefore: Date, notAfter: Date): KeyAndCertificate;
}

// ---------------------------------------------------------------------------------------------------
// DER encoding (X.690): tag, length (short form below 128, else 0x80|n followed by n big-endian bytes), contents.

function derLength(length: number): Buffer {
  if (length < 0x80) return Buffer.from([length]);
  const bytes: number[] = [];
  for (let rest = length; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest % 256);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}
const tlv = (tag: number, contents: Buffer): Buffer => Buffer.concat([Buffer.from([tag]), derLength(contents.length), contents]);
const sequence = (...items: Buffer[]): Buffer => tlv(0x30, Buffer.concat(items));
const set = (...items: Buffer[]): Buffer => tlv(0x31, Buffer.concat(items));
const octetString = (contents: Buffer): Buffer => tlv(0x04, contents);
const bitString = (contents: Buffer, unusedBits = 0): Buffer => tlv(0x03, Buffer.concat([Buffer.from([unusedBits]), contents]));
const TRUE = tlv(0x01, Buffer.from([0xff]));
/** An INTEGER from unsigned big-endian bytes: minimal, with a 0x00 prefix when the top bit is set (so it stays positive). */
function unsignedInteger(bytes: Buffer): Buffer {
  let first = 0;
  while (first < bytes.length - 1 && bytes[first] === 0) first++;
  const body = bytes.subarray(first);
  return tlv(0x02, body[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), body]) : body);
}
const smallInteger = (value: number): Buffer => unsignedInteger(Buffer.from([value]));
/** OBJECT IDENTIFIER: 40*arc1+arc2, then each arc in base 128, high bit set on all but its last byte. */
function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  const bytes: number[] = [];
  for (const arc of [arcs[0]! * 40 + arcs[1]!, ...arcs.slice(2)]) {
    const group = [arc & 0x7f];
    for (let rest = Math.floor(arc / 128); rest > 0; rest = Math.floor(rest / 128)) group.unshift(0x80 | (rest & 0x7f));
    bytes.push(...group);
  }
  return tlv(0x06, Buffer.from(bytes));
}
/** A named BIT STRING (e.g. KeyUsage) from bit numbers, bit 0 = most significant; DER drops trailing zero bits. */
function namedBits(bits: number[]): Buffer {
  const last = Math.max(...bits);
  const bytes = Buffer.alloc(Math.floor(last / 8) + 1);
  for (const bit of bits) bytes[bit >> 3]! |= 0x80 >> (bit & 7);
  return bitString(bytes, 7 - (last & 7));
}
/** Time (RFC 5280 4.1.2.5): UTCTime YYMMDDHHMMSSZ for 1950-2049, GeneralizedTime YYYYMMDDHHMMSSZ otherwise; seconds precision. */
function time(date: Date): Buffer {
  const year = date.getUTCFullYear();
  if (!(year >= 0 && year <= 9999)) throw new RangeError(`certificate time out of range: ${String(date)}`);
  const two = (n: number) => String(n).padStart(2, '0');
  const rest = two(date.getUTCMonth() + 1) + two(date.getUTCDate()) + two(date.getUTCHours()) + two(date.getUTCMinutes()) + two(date.getUTCSeconds()) + 'Z';
  return year >= 1950 && year < 2050
    ? tlv(0x17, Buffer.from(two(year % 100) + rest, 'ascii'))
    : tlv(0x18, Buffer.from(String(year).padStart(4, '0') + rest, 'ascii'));
}

// Just enough DER reading to take fields out of existing certificates and keys.
interface Tlv { tag: number; offset: number; start: number; end: number }
function readTlv(der: Buffer, offset: number): Tlv {
  if (offset + 2 > der.length) throw new Error('DER: truncated');
  const tag = der[offset]!;
  let length = der[offset + 1]!;
  let start = offset + 2;
  if (length & 0x80) {
    const count = length & 0x7f;
    if (count === 0 || count > 6) throw new Error('DER: indefinite or oversized length');
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + (der[start + i] ?? NaN);
    start += count;
  }
  if (!(start + length <= der.length)) throw new Error('DER: truncated');
  return { tag, offset, start, end: start + length };
}
function children(der: Buffer, parent: Tlv): Tlv[] {
  const list: Tlv[] = [];
  for (let offset = parent.start; offset < parent.end; offset = list[list.length - 1]!.end) list.push(readTlv(der, offset));
  return list;
}

// ---------------------------------------------------------------------------------------------------
// Certificate pieces (RFC 5280 4.1 and 4.2.1).

const OID = {
  commonName: '2.5.4.3', ecdsaWithSha256: '1.2.840.10045.4.3.2',
  subjectKeyIdentifier: '2.5.29.14', keyUsage: '2.5.29.15', subjectAltName: '2.5.29.17', basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35', extKeyUsage: '2.5.29.37', serverAuth: '1.3.6.1.5.5.7.3.1', clientAuth: '1.3.6.1.5.5.7.3.2',
};
/** AlgorithmIdentifier ecdsa-with-SHA256, parameters absent (RFC 5758 3.2). */
const ECDSA_WITH_SHA256 = sequence(oid(OID.ecdsaWithSha256));
/** Name: an RDNSequence of one RDN holding one AttributeTypeAndValue, CN as UTF8String. */
const commonNameName = (commonName: string): Buffer => sequence(set(sequence(oid(OID.commonName), tlv(0x0c, Buffer.from(commonName, 'utf8')))));
/** Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE (omitted when false), extnValue OCTET STRING }. */
const extension = (id: string, critical: boolean, value: Buffer): Buffer =>
  sequence(oid(id), ...(critical ? [TRUE] : []), octetString(value));
/** Key identifier (RFC 5280 4.2.1.2 method 1): SHA-1 of the subjectPublicKey BIT STRING's contents (without its unused-bits byte). */
function keyIdentifier(spkiDer: Buffer): Buffer {
  const [, subjectPublicKey] = children(spkiDer, readTlv(spkiDer, 0));
  return createHash('sha1').update(spkiDer.subarray(subjectPublicKey!.start + 1, subjectPublicKey!.end)).digest();
}
const toPem = (label: string, der: Buffer): string =>
  `-----BEGIN ${label}-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '')}\n-----END ${label}-----\n`;

interface TbsFields { issuer: Buffer; subject: Buffer; spkiDer: Buffer; notBefore: Date; notAfter: Date; extensions: Buffer[] }
/** Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }, signed by `issuerKey`. */
function signCertificate(fields: TbsFields, issuerKey: KeyObject): string {
  if (!(fields.notBefore.getTime() <= fields.notAfter.getTime())) throw new RangeError('certificate validity: notBefore must not be after notAfter');
  let serial = randomBytes(16);
  while (serial.every((byte) => byte === 0)) serial = randomBytes(16);
  const tbs = sequence(
    tlv(0xa0, smallInteger(2)), // version [0] EXPLICIT: v3
    unsignedInteger(serial), // serialNumber: positive, at most 20 octets
    ECDSA_WITH_SHA256, // signature: must equal signatureAlgorithm
    fields.issuer,
    sequence(time(fields.notBefore), time(fields.notAfter)), // validity
    fields.subject,
    fields.spkiDer, // subjectPublicKeyInfo, as node exports it
    tlv(0xa3, sequence(...fields.extensions)), // extensions [3] EXPLICIT
  );
  // node returns an ECDSA signature as DER Ecdsa-Sig-Value, exactly what the BIT STRING holds.
  return toPem('CERTIFICATE', sequence(tbs, ECDSA_WITH_SHA256, bitString(sign('sha256', tbs, issuerKey))));
}
function newKeyPair(): { privateKey: KeyObject; spkiDer: Buffer; keyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { privateKey, spkiDer: publicKey.export({ type: 'spki', format: 'der' }), keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string };
}

/** The CA's subject Name (raw DER, so the leaf's issuer matches it byte for byte) and its subjectKeyIdentifier. */
function authorityFields(caCert: X509Certificate): { subject: Buffer; keyId: Buffer } {
  const der = caCert.raw;
  const tbs = readTlv(der, readTlv(der, 0).start);
  const fields = children(der, tbs);
  const first = fields[0]?.tag === 0xa0 ? 1 : 0; // version [0] present
  const subject = fields[first + 4]!;
  const spki = fields[first + 5]!;
  let keyId = keyIdentifier(der.subarray(spki.offset, spki.end));
  const extensions = fields.find((field) => field.tag === 0xa3);
  const skiOid = oid(OID.subjectKeyIdentifier);
  for (const ext of extensions ? children(der, children(der, extensions)[0]!) : []) {
    const parts = children(der, ext);
    if (!der.subarray(parts[0]!.offset, parts[0]!.end).equals(skiOid)) continue;
    const inner = readTlv(der, parts[parts.length - 1]!.start); // extnValue holds an OCTET STRING
    keyId = Buffer.from(der.subarray(inner.start, inner.end));
  }
  return { subject: Buffer.from(der.subarray(subject.offset, subject.end)), keyId };
}

/** The real issuer: EC P-256 keys, ecdsa-with-SHA256 signatures, 16 random bytes serial (positive INTEGER). Synchronous. */
export const x509Issuer: CertificateIssuer = {
  authority(commonName, notBefore, notAfter) {
    const { privateKey, spkiDer, keyPem } = newKeyPair();
    const name = commonNameName(commonName);
    const certPem = signCertificate({
      issuer: name, subject: name, spkiDer, notBefore, notAfter, extensions: [
        extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(spkiDer))),
        extension(OID.basicConstraints, true, sequence(TRUE, smallInteger(0))), // cA TRUE, pathLenConstraint 0
        extension(OID.keyUsage, true, namedBits([5, 6])), // keyCertSign(5), cRLSign(6)
      ],
    }, privateKey);
    return { certPem, keyPem };
  },
  leaf(ca, subject, notBefore, notAfter) {
    const caCert = new X509Certificate(ca.certPem);
    const caKey = createPrivateKey(ca.keyPem);
    if (caKey.asymmetricKeyType !== 'ec') throw new Error(`leaf: the CA key must be an EC key, not ${caKey.asymmetricKeyType}`);
    if (!caCert.checkPrivateKey(caKey)) throw new Error('leaf: the CA key does not belong to the CA certificate');
    for (const name of subject.dnsNames) {
      if (!/^[\x21-\x7e]+$/.test(name)) throw new Error(`leaf: DNS name ${JSON.stringify(name)} is not printable ASCII (IA5String)`);
    }
    const authority = authorityFields(caCert);
    const { spkiDer, keyPem } = newKeyPair();
    const certPem = signCertificate({
      issuer: authority.subject, subject: commonNameName(subject.commonName), spkiDer, notBefore, notAfter, extensions: [
        extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(spkiDer))),
        extension(OID.authorityKeyIdentifier, false, sequence(tlv(0x80, authority.keyId))), // keyIdentifier [0] IMPLICIT
        extension(OID.basicConstraints, true, sequence()), // cA FALSE (the DEFAULT, so omitted)
        extension(OID.keyUsage, true, namedBits([0])), // digitalSignature(0)
        extension(OID.extKeyUsage, false, sequence(oid(OID.serverAuth), oid(OID.clientAuth))),
        // GeneralNames SIZE (1..MAX): no SAN extension when there are no names. dNSName is [2] IMPLICIT IA5String.
        ...(subject.dnsNames.length ? [extension(OID.subjectAltName, false, sequence(...subject.dnsNames.map((name) => tlv(0x82, Buffer.from(name, 'ascii')))))] : []),
      ],
    }, caKey);
    return { certPem, keyPem };
  },
};

// ---------------------------------------------------------------------------------------------------
// Reading certificates.

/** Splits a PEM bundle into its certificates (PEM strings); other blocks (keys) are ignored. */
export function splitPemBundle(pem: string): string[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? []).map((block) => `${block}\n`);
}
function firstCertificate(pem: string): X509Certificate {
  const [first] = splitPemBundle(pem);
  if (!first) throw new Error('no PEM certificate found');
  return new X509Certificate(first);
}
/** The (first) CN of a subject or issuer, unescaped: the legacy object decodes the Name, `subject` escapes ',', '+', '"'. */
function commonNameOf(name: { CN?: string | string[] } | undefined): string | null {
  const cn = name?.CN;
  return (Array.isArray(cn) ? cn[0] : cn) ?? null;
}

/** Facts of a PEM certificate (first one if a bundle), via crypto.X509Certificate. */
export function certificateFacts(pem: string): { commonName: string | null; issuerCommonName: string | null; dnsNames: string[]; notBefore: Date; notAfter: Date; serialNumber: string; fingerprint256: string; isCa: boolean } {
  const cert = firstCertificate(pem);
  const legacy = cert.toLegacyObject();
  // subjectAltName reads "DNS:a, DNS:b, IP Address:..." (names cannot hold ", ": DNS names have no spaces).
  const dnsNames = (cert.subjectAltName ?? '').split(', ').filter((entry) => entry.startsWith('DNS:')).map((entry) => entry.slice(4));
  return {
    commonName: commonNameOf(legacy.subject), issuerCommonName: commonNameOf(legacy.issuer), dnsNames,
    notBefore: new Date(cert.validFrom), notAfter: new Date(cert.validTo),
    serialNumber: cert.serialNumber, fingerprint256: cert.fingerprint256, isCa: cert.ca,
  };
}

/**
 * Whether `leafPem` is signed by the CA `caPem` (or by any CA of a bundle) and both are valid at `at`
 * (X509Certificate.checkIssued + verify(publicKey) + dates). False too when either does not parse.
 */
export function issuedBy(leafPem: string, caPem: string, at: Date): boolean {
  const validAt = (cert: X509Certificate) => new Date(cert.validFrom).getTime() <= at.getTime() && at.getTime() <= new Date(cert.validTo).getTime();
  try {
    const leaf = firstCertificate(leafPem);
    return validAt(leaf) && splitPemBundle(caPem).some((pem) => {
      const ca = new X509Certificate(pem);
      return ca.ca && validAt(ca) && leaf.checkIssued(ca) && leaf.verify(ca.publicKey);
    });
  } catch {
    return false;
  }
}
