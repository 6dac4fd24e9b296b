// The certificates the operator issues (certificates.ts): issuance, renewal, authority rotation, and the
// property that no member ever meets a certificate its (possibly not yet refreshed) trust does not cover.

import test from 'ava';
import fc from 'fast-check';
import { planCertificates, renewalDue } from './certificates.ts';
import type { CertificatePlan, CertificateTimes } from './certificates.ts';
import { certificateFacts, issuedBy, splitPemBundle, x509Issuer } from './certs.ts';
import type { CertificateIssuer } from './certs.ts';
import type { ObservedSecret } from './kube.ts';

const T0 = Date.parse('2026-12-03T00:00:00Z');
const SHORT: CertificateTimes = { authorityValiditySeconds: 3000, certificateValiditySeconds: 600, authorityPropagationSeconds: 100 };
const text = (value: string | undefined): string => Buffer.from(value ?? '', 'base64').toString('utf8');
const members = (ids: number[]) => ids.map((nodeId) => ({ nodeId, dnsNames: [`g-${nodeId}.g-peers.ns.svc`] }));

/** The state the API server holds after a plan is applied. */
interface Held { authority: ObservedSecret | undefined; members: Map<number, ObservedSecret> }
const secret = (name: string, data: Record<string, string>): ObservedSecret => ({ apiVersion: 'v1', kind: 'Secret', metadata: { name }, data });
function hold(plan: CertificatePlan): Held {
  return { authority: secret('g-ca', plan.authorityData), members: new Map([...plan.memberData].map(([id, data]) => [id, secret(`g-node-${id}-tls`, data)])) };
}
function planAt(held: Held, seconds: number, ids: number[], times = SHORT, issuer: CertificateIssuer | null = x509Issuer): CertificatePlan {
  return planCertificates({ group: 'ns/g', now: new Date(T0 + seconds * 1000), times, authoritySecret: held.authority, memberSecrets: held.members, members: members(ids), issuer: issuer ?? undefined });
}
const empty: Held = { authority: undefined, members: new Map() };

test('renewalDue: a third of the lifetime left', (t) => {
  const from = new Date(T0);
  const until = new Date(T0 + 900_000);
  t.false(renewalDue(from, until, new Date(T0 + 599_000)));
  t.true(renewalDue(from, until, new Date(T0 + 601_000)));
});

test('first round: an authority and one certificate per member, CN node-<id>, its DNS names, signed by the authority', (t) => {
  const plan = planAt(empty, 0, [1, 2, 3]);
  const ca = text(plan.authorityData['ca.crt']);
  t.true(certificateFacts(ca).isCa);
  t.is(certificateFacts(ca).commonName, 'ns/g-ca');
  t.is(plan.authorityData['previous.crt'], undefined);
  for (const id of [1, 2, 3]) {
    const data = plan.memberData.get(id)!;
    const leaf = text(data['tls.crt']);
    t.is(certificateFacts(leaf).commonName, `node-${id}`);
    t.true(issuedBy(leaf, ca, new Date(T0)));
    t.is(text(data['ca.crt']).trim(), ca.trim());
    t.regex(text(data['tls.key']), /BEGIN PRIVATE KEY/);
  }
  t.is(plan.issued.length, 4);
  t.regex(plan.issued[0]!, /issued the group's certificate authority/);
  t.regex(plan.issued[1]!, /issued node 1's certificate \(none yet; valid until /);
});

test('a settled group: the same data again, nothing issued, no issuer needed', (t) => {
  const held = hold(planAt(empty, 0, [1, 2, 3]));
  const again = planAt(held, 10, [1, 2, 3], SHORT, null);
  t.deepEqual(again.issued, []);
  t.deepEqual(again.authorityData, held.authority!.data);
  for (const [id, data] of again.memberData) t.deepEqual(data, held.members.get(id)!.data);
});

test('a certificate is due with a third of its lifetime left: only that one is issued again, by the same authority', (t) => {
  const held = hold(planAt(empty, 0, [1, 2]));
  // Valid from -60 s (a tenth of 600 s back) to 600 s: due with 220 s left, i.e. at 380 s.
  t.deepEqual(planAt(held, 379, [1, 2]).issued, []);
  const renewed = planAt(held, 381, [1, 2]);
  t.deepEqual(renewed.issued.map((line) => line.replace(/valid until .*\)/, '')), ["issued node 1's certificate (it expires soon; ", "issued node 2's certificate (it expires soon; "]);
  t.deepEqual(renewed.authorityData, held.authority!.data);
});

test('a new member gets its certificate at once; a certificate for another node or from another authority is replaced', (t) => {
  const held = hold(planAt(empty, 0, [1, 2]));
  const grown = planAt(held, 5, [1, 2, 3]);
  t.deepEqual(grown.issued.length, 1);
  t.regex(grown.issued[0]!, /node 3's certificate \(none yet/);
  const swapped: Held = { authority: held.authority, members: new Map([[1, held.members.get(2)!], [2, held.members.get(2)!]]) };
  t.regex(planAt(swapped, 5, [1, 2]).issued.join('\n'), /node 1's certificate \(it names another member/);
  const foreign = hold(planAt(empty, 0, [1]));
  const mixed: Held = { authority: held.authority, members: new Map([[1, foreign.members.get(1)!], [2, held.members.get(2)!]]) };
  t.regex(planAt(mixed, 5, [1, 2]).issued.join('\n'), /node 1's certificate \(the group's authority did not sign it/);
});

test('without an issuer, a due certificate is a clear error', (t) => {
  t.throws(() => planAt(empty, 0, [1], SHORT, null), { message: /the group ns\/g needs certificates issued: pass issuer/ });
});

test('authority rotation: the new authority is trusted first, signs only after the propagation time, the old one is dropped once expired', (t) => {
  let held = hold(planAt(empty, 0, [1, 2]));
  const first = text(held.authority!.data!['ca.crt']);
  // Valid from -300 s to 3000 s: due with 1100 s left, i.e. at 1900 s. Certificates are renewed meanwhile.
  for (let s = 100; s < 1900; s += 100) held = hold(planAt(held, s, [1, 2]));
  const rotated = planAt(held, 1901, [1, 2]);
  t.regex(rotated.issued[0]!, /issued a new certificate authority .* the old one stays trusted until/);
  const second = text(rotated.authorityData['ca.crt']);
  t.not(second, first);
  t.is(text(rotated.authorityData['previous.crt']), first);
  for (const data of rotated.memberData.values()) {
    t.is(splitPemBundle(text(data['ca.crt'])).length, 2, 'both authorities trusted');
    t.true(issuedBy(text(data['tls.crt']), first, new Date(T0 + 1901_000)), 'still signed by the old one');
  }
  held = hold(rotated);
  // Within the propagation time (100 s): nothing new. After it: every certificate from the new authority.
  t.deepEqual(planAt(held, 1950, [1, 2]).issued, []);
  const switched = planAt(held, 2002, [1, 2]);
  t.is(switched.issued.length, 2);
  t.regex(switched.issued.join('\n'), /node 1's certificate \((the new authority signs from now on|it expires soon)/);
  for (const data of switched.memberData.values()) t.true(issuedBy(text(data['tls.crt']), second, new Date(T0 + 2002_000)));
  held = hold(switched);
  // The old authority expires at 3000 s: then it is no longer trusted nor kept.
  for (let s = 2100; s <= 3100; s += 100) held = hold(planAt(held, s, [1, 2]));
  t.is(held.authority!.data!['previous.crt'], undefined);
  for (const member of held.members.values()) t.is(splitPemBundle(text(member.data!['ca.crt'])).length, 1);
});

test('property: over any sequence of reconciles, every certificate is valid, names its node, and is trusted by what every member trusted one round before', (t) => {
  fc.assert(fc.property(
    fc.array(fc.record({ advanceSeconds: fc.integer({ min: 1, max: 400 }), members: fc.integer({ min: 1, max: 4 }) }), { minLength: 1, maxLength: 40 }),
    (rounds) => {
      let held = empty;
      let seconds = 0;
      for (const round of rounds) {
        seconds += round.advanceSeconds;
        const ids = Array.from({ length: round.members }, (_, i) => i + 1);
        const plan = planAt(held, seconds, ids);
        const now = new Date(T0 + seconds * 1000);
        for (const [id, data] of plan.memberData) {
          const leaf = text(data['tls.crt']);
          if (certificateFacts(leaf).commonName !== `node-${id}`) return false;
          if (!splitPemBundle(text(data['ca.crt'])).some((ca) => issuedBy(leaf, ca, now))) return false;
          // A member whose volume still shows the previous round's ca.crt accepts this certificate.
          for (const [, before] of held.members) {
            if (!splitPemBundle(text(before.data!['ca.crt'])).some((ca) => issuedBy(leaf, ca, now))) return false;
          }
        }
        held = hold(plan);
      }
      return true;
    },
  ), { numRuns: 25 });
  t.pass();
});

test('a certificate that lacks a name the member needs now (localhost, added for port-forwards) is issued again, with every name; the others are kept', (t) => {
  const held = hold(planAt(empty, 0, [1, 2]));
  const wanted = (ids: number[]) => ids.map((nodeId) => ({ nodeId, dnsNames: [`g-${nodeId}.g-peers.ns.svc`, ...(nodeId === 2 ? ['localhost'] : [])] }));
  const plan = planCertificates({ group: 'ns/g', now: new Date(T0 + 10_000), times: SHORT, authoritySecret: held.authority, memberSecrets: held.members, members: wanted([1, 2]), issuer: x509Issuer });
  t.deepEqual(plan.issued.map((m) => m.replace(/; valid until .*/, '')), ["issued node 2's certificate (it lacks the name localhost"]);
  t.deepEqual(certificateFacts(text(plan.memberData.get(2)!['tls.crt'])).dnsNames, ['g-2.g-peers.ns.svc', 'localhost']);
  t.deepEqual(plan.memberData.get(1), held.members.get(1)!.data);
  t.is(text(plan.trusted), text(plan.memberData.get(1)!['ca.crt']), 'trusted: what the members\' ca.crt holds');
});
