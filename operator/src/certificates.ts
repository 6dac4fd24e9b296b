// The certificates the operator issues to a group's members for mutual TLS (spec.tls.mode "mutual" without
// spec.tls.secretName; ADR 0014). Pure given its inputs: the time, the Secrets as observed, and an issuer
// (the key generation, made by the caller like every other randomness of reconcile).
//
// Layout:
//  - Secret <group>-ca (operator only, never mounted): ca.crt (the current authority), ca.key, and
//    previous.crt (the authority it replaced, trusted until it expires).
//  - Secret <group>-node-<id>-tls per member (type kubernetes.io/tls, the layout cert-manager writes too):
//    tls.crt (CN "node-<id>", the pod's DNS names), tls.key, ca.crt (every authority still trusted).
//
// Renewal: a certificate is replaced once less than a third of its lifetime is left. The agents re-read
// their files (the kubelet updates a Secret volume in place) and use the new ones for new connections.
// An authority is replaced the same way, in two steps so that no member ever meets a certificate it does
// not trust: the new authority first joins every member's ca.crt; only after `authorityPropagationSeconds`
// (the kubelet's volume refresh is about a minute) does it sign the members' certificates.

import { certificateFacts, issuedBy } from './certs.ts';
import type { CertificateIssuer, KeyAndCertificate } from './certs.ts';
import type { ObservedSecret } from './kube.ts';

export interface CertificateTimes {
  /** Lifetime of the group's certificate authority. */
  authorityValiditySeconds: number;
  /** Lifetime of a member's certificate. */
  certificateValiditySeconds: number;
  /** How long a new authority is only trusted, before it signs: the members' volumes must show it first. */
  authorityPropagationSeconds: number;
}

export const DEFAULT_CERTIFICATE_TIMES: Readonly<CertificateTimes> = Object.freeze({
  authorityValiditySeconds: 10 * 365 * 86_400,
  certificateValiditySeconds: 90 * 86_400,
  authorityPropagationSeconds: 600,
});

/** Certificates are dated this far back (at most a tenth of their lifetime), for clocks a little behind. */
const BACKDATE_SECONDS_MAX = 300;
const backdateSeconds = (validitySeconds: number): number => Math.min(BACKDATE_SECONDS_MAX, validitySeconds / 10);

export interface MemberCertificateRequest {
  nodeId: number;
  dnsNames: string[];
}

export interface CertificatePlan {
  /** Data of the authority Secret (base64 values, as a Secret's data). */
  authorityData: Record<string, string>;
  /** Data of each member's Secret, by node id. */
  memberData: Map<number, Record<string, string>>;
  /** What was issued this round, in plain words (for Events); empty when nothing changed. */
  issued: string[];
  /** The earliest notAfter among the members' certificates (ISO), or null. */
  earliestNotAfter: string | null;
  /** Every authority trusted now (PEM bundle, base64): the members' ca.crt, and what clients verify members with. */
  trusted: string;
}

const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');
const unb64 = (value: string | undefined): string | null => (value === undefined ? null : Buffer.from(value, 'base64').toString('utf8'));

/** Whether less than a third of the lifetime of a certificate valid [notBefore, notAfter] is left at `now`. */
export function renewalDue(notBefore: Date, notAfter: Date, now: Date): boolean {
  const lifetimeMs = notAfter.getTime() - notBefore.getTime();
  return notAfter.getTime() - now.getTime() < lifetimeMs / 3;
}

function parsed(certPem: string | null, keyPem: string | null): (KeyAndCertificate & { notBefore: Date; notAfter: Date; commonName: string | null; dnsNames: string[] }) | null {
  if (certPem === null || keyPem === null) return null;
  try {
    const facts = certificateFacts(certPem);
    return { certPem, keyPem, notBefore: facts.notBefore, notAfter: facts.notAfter, commonName: facts.commonName, dnsNames: facts.dnsNames };
  } catch {
    return null; // unreadable: issued again
  }
}

const iso = (date: Date): string => date.toISOString().replace(/\.\d{3}Z$/, 'Z');

export function planCertificates(args: {
  group: string;
  now: Date;
  times: CertificateTimes;
  authoritySecret: ObservedSecret | undefined;
  memberSecrets: ReadonlyMap<number, ObservedSecret>;
  members: MemberCertificateRequest[];
  issuer: CertificateIssuer | undefined;
}): CertificatePlan {
  const { now, times } = args;
  const issued: string[] = [];
  const needIssuer = (): CertificateIssuer => {
    if (args.issuer === undefined) throw new TypeError(`reconcile: the group ${args.group} needs certificates issued: pass issuer`);
    return args.issuer;
  };
  /** Valid from a little before now, for `seconds` from now. */
  const validity = (seconds: number): { notBefore: Date; notAfter: Date } => ({
    notBefore: new Date(now.getTime() - backdateSeconds(seconds) * 1000), notAfter: new Date(now.getTime() + seconds * 1000),
  });

  // The authority: kept while more than a third of its life is left; the one it replaced stays trusted
  // (and signs, until the new one has propagated) until it expires.
  const data = args.authoritySecret?.data ?? {};
  let current = parsed(unb64(data['ca.crt']), unb64(data['ca.key']));
  let previous = parsed(unb64(data['previous.crt']), unb64(data['previous.key']));
  if (current === null || renewalDue(current.notBefore, current.notAfter, now)) {
    const replaced = current;
    const { notBefore, notAfter } = validity(times.authorityValiditySeconds);
    current = { ...needIssuer().authority(`${args.group}-ca`, notBefore, notAfter), notBefore, notAfter, commonName: `${args.group}-ca`, dnsNames: [] };
    previous = replaced;
    issued.push(replaced === null
      ? `issued the group's certificate authority (valid until ${iso(notAfter)})`
      : `issued a new certificate authority (valid until ${iso(notAfter)}); the old one stays trusted until ${iso(replaced.notAfter)} and signs until every member trusts the new one`);
  }
  if (previous !== null && previous.notAfter <= now) previous = null;
  const mintedMs = current.notBefore.getTime() + backdateSeconds(times.authorityValiditySeconds) * 1000;
  const propagated = now.getTime() - mintedMs >= times.authorityPropagationSeconds * 1000;
  const signer = !propagated && previous !== null ? previous : current;
  const trusted = [current, ...(previous !== null ? [previous] : [])].map((ca) => ca.certPem.trim()).join('\n') + '\n';
  const authorityData: Record<string, string> = { 'ca.crt': b64(current.certPem), 'ca.key': b64(current.keyPem) };
  if (previous !== null) Object.assign(authorityData, { 'previous.crt': b64(previous.certPem), 'previous.key': b64(previous.keyPem) });

  const memberData = new Map<number, Record<string, string>>();
  let earliest: Date | null = null;
  for (const member of args.members) {
    const secret = args.memberSecrets.get(member.nodeId)?.data ?? {};
    const commonName = `node-${member.nodeId}`;
    let leaf = parsed(unb64(secret['tls.crt']), unb64(secret['tls.key']));
    // (Each check parses certificates: the signature check against the current authority is made once.)
    const byCurrent = leaf !== null && issuedBy(leaf.certPem, current.certPem, now);
    const why = leaf === null ? 'none yet'
      : leaf.commonName !== commonName ? 'it names another member'
        : member.dnsNames.some((name) => !leaf!.dnsNames.includes(name)) ? `it lacks the name${member.dnsNames.filter((name) => !leaf!.dnsNames.includes(name)).length === 1 ? '' : 's'} ${member.dnsNames.filter((name) => !leaf!.dnsNames.includes(name)).join(', ')}`
        : !byCurrent && !(previous !== null && issuedBy(leaf.certPem, previous.certPem, now)) ? 'the group\'s authority did not sign it'
          : renewalDue(leaf.notBefore, leaf.notAfter, now) ? 'it expires soon'
            : signer === current && !byCurrent ? 'the new authority signs from now on' : null;
    if (why !== null) {
      const wanted = validity(times.certificateValiditySeconds);
      const notBefore = new Date(Math.max(wanted.notBefore.getTime(), signer.notBefore.getTime()));
      const notAfter = new Date(Math.min(wanted.notAfter.getTime(), signer.notAfter.getTime()));
      leaf = { ...needIssuer().leaf(signer, { commonName, dnsNames: member.dnsNames }, notBefore, notAfter), notBefore, notAfter, commonName, dnsNames: member.dnsNames };
      issued.push(`issued node ${member.nodeId}'s certificate (${why}; valid until ${iso(notAfter)})`);
    }
    if (earliest === null || leaf!.notAfter < earliest) earliest = leaf!.notAfter;
    memberData.set(member.nodeId, { 'tls.crt': b64(leaf!.certPem), 'tls.key': b64(leaf!.keyPem), 'ca.crt': b64(trusted) });
  }
  return { authorityData, memberData, issued, earliestNotAfter: earliest === null ? null : iso(earliest), trusted: b64(trusted) };
}
