// Test support (not used by the agent): fast-check generators of structurally valid wire messages under
// given codec limits, one sample of every kind, and an independent bounds check of decoded messages.
import fc from 'fast-check';
import type {
  Ballot, Layout, LogRecord, RestartDecision, RestartReport, Row, SavedTrim, StateTransferPlan, Version, View,
  ViewChangeValue,
} from '../core/types.ts';
import { u32Max, versionPartMax } from './codec.ts';
import type { CodecLimits, StateTransferFrame, WireMessage } from './codec.ts';

/** Keeps generated structures small (the limits still bound them). */
const cap = (limit: number, small: number): number => Math.min(limit, small);

export function arbitraries(l: CodecLimits) {
  const nodeId = fc.oneof(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max: u32Max }));
  const viewId = fc.oneof(fc.integer({ min: 0, max: 100 }), fc.integer({ min: 0, max: u32Max }));
  const count = fc.oneof(fc.nat(1000), fc.maxSafeNat());
  const shardId = fc.integer({ min: 0, max: l.shardsMax - 1 });
  const versionPart = fc.oneof(fc.integer({ min: -1, max: 50 }), fc.integer({ min: -1, max: versionPartMax }));
  const version: fc.Arbitrary<Version> = fc.record({ viewId: versionPart, seq: versionPart });
  const members = fc.array(nodeId, { maxLength: cap(l.membersMax, 6) });
  const perShard = <T>(a: fc.Arbitrary<T>) => fc.array(a, { maxLength: cap(l.shardsMax, 4) });
  const layout: fc.Arbitrary<Layout> = fc.record({
    shards: perShard(fc.record({
      shardId,
      subgroup: fc.string({ maxLength: cap(l.nameCharsMax, 12) }),
      shardIndex: shardId,
      members,
      senders: members,
      deliveryMode: fc.constantFrom('ordered' as const, 'raw' as const),
      persistent: fc.boolean(),
    })),
  });
  const view: fc.Arbitrary<View> = fc.record({ viewId, members, layout });
  const trims = perShard(fc.array(count, { maxLength: cap(l.membersMax, 6) }));
  const plan: fc.Arbitrary<StateTransferPlan> = fc.record({ shardId, from: nodeId, to: members, through: version });
  const viewChangeValue: fc.Arbitrary<ViewChangeValue> = fc.record({
    fromViewId: viewId, next: view, trims, joined: members, removed: members,
    transfers: perShard(plan), lostShards: perShard(shardId),
  });
  const ballot: fc.Arbitrary<Ballot> = fc.record({ round: count, nodeId });
  const savedTrim: fc.Arbitrary<SavedTrim> = fc.record({ viewId, trims, lastVersions: perShard(version) });
  const savedTrims = fc.array(savedTrim, { maxLength: cap(l.savedTrimsMax, 3) });
  const report: fc.Arbitrary<RestartReport> = fc.record({
    nodeId, lastView: view, highestViewIdSeen: versionPart, trims: savedTrims,
    logTails: perShard(fc.record({ shardId, version })), promised: fc.option(ballot, { nil: null }),
    incompleteShards: perShard(shardId),
  }, { requiredKeys: ['nodeId', 'lastView', 'highestViewIdSeen', 'trims', 'logTails', 'promised'] });
  const decision: fc.Arbitrary<RestartDecision> = fc.record({
    lastViewId: fc.nat(1000),
    view,
    shards: perShard(fc.record({ shardId, source: fc.option(nodeId, { nil: null }), truncateTo: version })),
    trims: savedTrims,
  });
  const ballotPart = fc.oneof(fc.integer({ min: -1, max: 8 }), fc.integer({ min: -1, max: versionPartMax }));
  const row: fc.Arbitrary<Row> = fc.record({
    pushCount: count,
    heartbeat: count,
    suspected: fc.array(fc.boolean(), { maxLength: cap(l.membersMax, 20) }),
    leaving: fc.boolean(),
    wedged: fc.boolean(),
    received: perShard(fc.array(count, { maxLength: cap(l.membersMax, 6) })),
    delivered: perShard(count),
    persisted: perShard(count),
    stateReady: fc.array(fc.boolean(), { maxLength: cap(l.shardsMax, 12) }),
    promisedBallot: ballotPart,
    acceptedBallot: ballotPart,
    accepted: fc.option(viewChangeValue, { nil: null, freq: 3 }),
    committed: fc.boolean(),
    pendingJoins: fc.array(fc.record({ nodeId, incarnation: count }), { maxLength: cap(l.pendingJoinsMax, 4) }),
    diskId: fc.oneof(fc.constant(0), count),
  });
  const payload = fc.uint8Array({ maxLength: cap(l.payloadBytesMax, 64) });
  const record: fc.Arbitrary<LogRecord> = fc.record({ shardId, version, sender: nodeId, payload });
  const k = <K extends string>(kind: K) => fc.constant(kind);

  const byKind = {
    data: fc.record({
      kind: k('data'), from: nodeId, viewId, shardId, senderRank: fc.integer({ min: 0, max: l.membersMax - 1 }),
      index: count, payload: fc.option(payload, { nil: null, freq: 4 }),
    }),
    row: fc.record({ kind: k('row'), from: nodeId, viewId, row }),
    stateTransfer: fc.record({
      kind: k('stateTransfer'), from: nodeId, shardId, through: version,
      records: fc.array(record, { maxLength: cap(l.recordsMax, 5) }),
      more: fc.constant(true),
    }, { requiredKeys: ['kind', 'from', 'shardId', 'through', 'records'] }) as fc.Arbitrary<StateTransferFrame>,
    joinRequest: fc.record({ kind: k('joinRequest'), from: nodeId, incarnation: count }),
    joinRedirect: fc.record({ kind: k('joinRedirect'), from: nodeId, leader: nodeId }),
    welcome: fc.record({ kind: k('welcome'), from: nodeId, to: nodeId, view, incarnation: count, transfers: perShard(plan) }),
    viewDecided: fc.record({ kind: k('viewDecided'), from: nodeId, value: viewChangeValue }),
    restartReport: fc.record({ kind: k('restartReport'), from: nodeId, report }),
    restartActive: fc.record({ kind: k('restartActive'), from: nodeId, viewId, leader: nodeId }),
    restartPrepare: fc.record({ kind: k('restartPrepare'), from: nodeId, ballot }),
    restartPromise: fc.record({
      kind: k('restartPromise'), from: nodeId, ballot,
      accepted: fc.option(fc.record({ ballot, plan: decision }), { nil: null }), report,
    }),
    restartAccept: fc.record({ kind: k('restartAccept'), from: nodeId, ballot, plan: decision }),
    restartAccepted: fc.record({ kind: k('restartAccepted'), from: nodeId, ballot }),
    restartCommit: fc.record({ kind: k('restartCommit'), from: nodeId, plan: decision }),
    stateRequest: fc.record({ kind: k('stateRequest'), from: nodeId, shardId, viewId }),
    foundingHello: fc.record({ kind: k('foundingHello'), from: nodeId, members: fc.array(nodeId, { minLength: 1, maxLength: cap(l.membersMax, 6) }) }),
    app: fc.record({ kind: k('app'), from: nodeId, body: fc.uint8Array({ maxLength: 64 }) }),
    block: fc
      .record({ from: nodeId, origin: nodeId, messageId: fc.nat(), blockCount: fc.integer({ min: 1, max: 1000 }), members, bytes: fc.uint8Array({ maxLength: 64 }) })
      .chain((b) => fc.record({ blockIndex: fc.integer({ min: 0, max: b.blockCount - 1 }), extra: fc.nat({ max: 1000 }) }).map(({ blockIndex, extra }) => ({
        kind: 'block' as const, from: b.from, origin: b.origin, messageId: b.messageId, blockIndex, blockCount: b.blockCount,
        totalBytes: b.bytes.byteLength + extra, members: b.members, bytes: b.bytes,
      }))),
  } satisfies { [K in WireMessage['kind']]: fc.Arbitrary<Extract<WireMessage, { kind: K }>> };

  const message: fc.Arbitrary<WireMessage> = fc.oneof(...Object.values(byKind) as fc.Arbitrary<WireMessage>[]);
  return { byKind, message, row, view, viewChangeValue };
}

/** One valid message of every kind, all sent by `from` (deterministic; for transport tests). */
export function sampleMessages(from: number): WireMessage[] {
  const view: View = {
    viewId: 3,
    members: [1, 2, 3],
    layout: {
      shards: [
        { shardId: 0, subgroup: 'kv', shardIndex: 0, members: [1, 2, 3], senders: [1, 2, 3], deliveryMode: 'ordered', persistent: true },
        { shardId: 1, subgroup: 'cache', shardIndex: 0, members: [2, 3], senders: [2], deliveryMode: 'raw', persistent: false },
      ],
    },
  };
  const value: ViewChangeValue = {
    fromViewId: 3, next: { ...view, viewId: 4, members: [1, 2, 3, 4] }, trims: [[5, 4, 4], [7]], joined: [4], removed: [],
    transfers: [{ shardId: 0, from: 1, to: [4], through: { viewId: 3, seq: 12 } }], lostShards: [],
  };
  const trim: SavedTrim = { viewId: 2, trims: [[1, 1, 0], [2]], lastVersions: [{ viewId: 2, seq: 4 }, { viewId: -1, seq: -1 }] };
  const report: RestartReport = {
    nodeId: from, lastView: view, highestViewIdSeen: 4, trims: [trim],
    logTails: [{ shardId: 0, version: { viewId: 3, seq: 11 } }], promised: { round: 2, nodeId: 1 }, incompleteShards: [1],
  };
  const plan: RestartDecision = {
    lastViewId: 4,
    view: { ...view, viewId: 5 }, shards: [{ shardId: 0, source: 2, truncateTo: { viewId: 3, seq: 11 } }, { shardId: 1, source: null, truncateTo: { viewId: -1, seq: -1 } }],
    trims: [trim],
  };
  const row: Row = {
    pushCount: 42, heartbeat: 40, suspected: [false, false, true], leaving: false, wedged: true,
    received: [[5, 4, 4], [7]], delivered: [13, 7], persisted: [12, 0], stateReady: [true, true],
    promisedBallot: 0, acceptedBallot: 0, accepted: value, committed: false, pendingJoins: [{ nodeId: 4, incarnation: 77 }],
    diskId: 3001,
  };
  return [
    { kind: 'data', from, viewId: 3, shardId: 0, senderRank: 1, index: 17, payload: new Uint8Array([1, 2, 3, 250]) },
    { kind: 'data', from, viewId: 3, shardId: 0, senderRank: 1, index: 18, payload: null },
    { kind: 'row', from, viewId: 3, row },
    { kind: 'row', from, viewId: 3, row: { ...row, accepted: null, acceptedBallot: -1, promisedBallot: -1, pendingJoins: [] } },
    { kind: 'stateTransfer', from, shardId: 0, through: { viewId: 3, seq: 12 }, records: [
      { shardId: 0, version: { viewId: 3, seq: 11 }, sender: 2, payload: new Uint8Array([9, 9]) },
      { shardId: 0, version: { viewId: 3, seq: 12 }, sender: 3, payload: new Uint8Array(0) },
    ] },
    { kind: 'joinRequest', from, incarnation: 12345 },
    { kind: 'joinRedirect', from, leader: 1 },
    { kind: 'welcome', from, to: 4, view: value.next, incarnation: 12345, transfers: value.transfers },
    { kind: 'viewDecided', from, value },
    { kind: 'restartReport', from, report },
    { kind: 'restartActive', from, viewId: 3, leader: 1 },
    { kind: 'restartPrepare', from, ballot: { round: 3, nodeId: from } },
    { kind: 'restartPromise', from, ballot: { round: 3, nodeId: 1 }, accepted: { ballot: { round: 2, nodeId: 1 }, plan }, report },
    { kind: 'restartAccept', from, ballot: { round: 3, nodeId: 1 }, plan },
    { kind: 'restartAccepted', from, ballot: { round: 3, nodeId: 1 } },
    { kind: 'restartCommit', from, plan },
    { kind: 'stateRequest', from, shardId: 1, viewId: 3 },
    { kind: 'foundingHello', from, members: [1, 2, 3] },
    { kind: 'app', from, body: new Uint8Array([123, 125]) },
    { kind: 'block', from, origin: 2, messageId: 9, blockIndex: 1, blockCount: 3, totalBytes: 10, members: [2, 1, 3], bytes: new Uint8Array([1, 2, 3, 4]) },
  ];
}

/**
 * Independent check that a decoded message respects the limits: every integer safe, every list within
 * its bound, every payload within payloadBytesMax. Returns the first violation, or null.
 */
export function boundsViolation(m: WireMessage, l: CodecLimits): string | null {
  const listMax = Math.max(l.membersMax, l.shardsMax, l.pendingJoinsMax, l.savedTrimsMax);
  const walk = (v: unknown, path: string): string | null => {
    if (v === null || typeof v === 'boolean') return null;
    if (typeof v === 'number') return Number.isSafeInteger(v) && v >= -1 ? null : `${path}: ${v} is not an integer >= -1`;
    if (typeof v === 'string') return path.endsWith('.kind') || v.length <= l.nameCharsMax ? null : `${path}: string over nameCharsMax`;
    if (v instanceof Uint8Array) {
      // App bodies and pipeline blocks are bounded by the frame, not by payloadBytesMax.
      if (path === 'app.body' || path === 'block.bytes') return v.byteLength <= l.frameBytesMax ? null : `${path}: over frameBytesMax`;
      return v.byteLength <= l.payloadBytesMax ? null : `${path}: payload over payloadBytesMax`;
    }
    if (Array.isArray(v)) {
      const max = path.endsWith('records') ? l.recordsMax : listMax;
      if (v.length > max) return `${path}: ${v.length} entries`;
      for (let i = 0; i < v.length; i++) {
        const e = walk(v[i], `${path}[${i}]`);
        if (e) return e;
      }
      return null;
    }
    if (typeof v === 'object') {
      for (const [key, value] of Object.entries(v)) {
        const e = walk(value, `${path}.${key}`);
        if (e) return e;
      }
      return null;
    }
    return `${path}: unexpected ${typeof v}`;
  };
  const e = walk(m, m.kind);
  if (e) return e;
  if (!Number.isInteger(m.from) || m.from < 0 || m.from > u32Max) return `from ${m.from} is not a u32`;
  if ('shardId' in m && (m.shardId < 0 || m.shardId >= l.shardsMax)) return `shardId ${m.shardId} out of bounds`;
  if (m.kind === 'data' && (m.senderRank < 0 || m.senderRank >= l.membersMax)) return `senderRank ${m.senderRank} out of bounds`;
  if (m.kind === 'row') {
    const r = m.row;
    if (r.suspected.length > l.membersMax || r.received.length > l.shardsMax || r.received.some((c) => c.length > l.membersMax)) return 'row arrays out of bounds';
    if (r.pendingJoins.length > l.pendingJoinsMax) return 'pendingJoins out of bounds';
  }
  return null;
}
