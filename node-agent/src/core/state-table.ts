// The shared state table (SST): one row per member of the view, each member writing only its own row
// and pushing it to the others. Every field is a counter that only goes up (or a flag that only turns
// on) within a view; RowMonitor checks that after every step.
//
//   field          invariant (within one view)
//   pushCount      only goes up; a receiver keeps the row with the highest count (rows are snapshots)
//   heartbeat      only goes up (liveness; a member silent for suspectTicks is suspected)
//   suspected[r]   false -> true only (suspicions are sticky and spread to every member)
//   leaving        false -> true only
//   wedged         false -> true only; once true the member's received column is frozen
//   received[s][k] only goes up; contiguous count of messages from sender k of shard s
//   delivered[s]   only goes up; delivered[s] <= stable prefix (min over members of received)
//   persisted[s]   only goes up; persisted[s] <= delivered[s]
//   stateReady[s]  false -> true only (a state transfer completed)
//   promisedBallot only goes up (the view-change leader rank this member follows)
//   acceptedBallot only goes up; accepted changes only together with acceptedBallot
//   committed      false -> true only; committed => accepted is the decided value
import type { Layout, Row } from './types.ts';

export function emptyRow(memberCount: number, layout: Layout): Row {
  return {
    pushCount: 0,
    heartbeat: 0,
    suspected: new Array<boolean>(memberCount).fill(false),
    leaving: false,
    wedged: false,
    received: layout.shards.map((s) => new Array<number>(s.senders.length).fill(0)),
    delivered: layout.shards.map(() => 0),
    persisted: layout.shards.map(() => 0),
    stateReady: layout.shards.map(() => false),
    promisedBallot: -1,
    acceptedBallot: -1,
    accepted: null,
    committed: false,
    pendingJoins: [],
    diskId: 0,
  };
}

/** A deep copy of the mutable parts (the accepted value is immutable once made, so it is shared). */
export function cloneRow(row: Row): Row {
  return {
    ...row,
    suspected: [...row.suspected],
    received: row.received.map((r) => [...r]),
    delivered: [...row.delivered],
    persisted: [...row.persisted],
    stateReady: [...row.stateReady],
    pendingJoins: row.pendingJoins.map((j) => ({ ...j })),
  };
}

/** Remembers the last checked copy of a row and throws if any monotone field went backwards. */
export class RowMonitor {
  private viewId = -1;
  private last: Row | null = null;

  reset(): void {
    this.last = null;
  }

  check(viewId: number, row: Row): void {
    const prev = this.viewId === viewId ? this.last : null;
    if (prev) {
      const fail = (field: string, a: unknown, b: unknown): never => {
        throw new Error(`invariant: state-table field ${field} went from ${String(a)} to ${String(b)} in view ${viewId}`);
      };
      if (row.pushCount < prev.pushCount) fail('pushCount', prev.pushCount, row.pushCount);
      if (row.heartbeat < prev.heartbeat) fail('heartbeat', prev.heartbeat, row.heartbeat);
      prev.suspected.forEach((s, i) => { if (s && !row.suspected[i]) fail(`suspected[${i}]`, true, false); });
      if (prev.leaving && !row.leaving) fail('leaving', true, false);
      if (prev.wedged && !row.wedged) fail('wedged', true, false);
      prev.received.forEach((cols, s) => cols.forEach((c, k) => {
        const now = row.received[s]![k]!;
        if (now < c) fail(`received[${s}][${k}]`, c, now);
        if (prev.wedged && now !== c) fail(`received[${s}][${k}] after wedge`, c, now);
      }));
      prev.delivered.forEach((d, s) => { if (row.delivered[s]! < d) fail(`delivered[${s}]`, d, row.delivered[s]); });
      prev.persisted.forEach((p, s) => { if (row.persisted[s]! < p) fail(`persisted[${s}]`, p, row.persisted[s]); });
      prev.stateReady.forEach((r, s) => { if (r && !row.stateReady[s]) fail(`stateReady[${s}]`, true, false); });
      if (row.promisedBallot < prev.promisedBallot) fail('promisedBallot', prev.promisedBallot, row.promisedBallot);
      if (row.acceptedBallot < prev.acceptedBallot) fail('acceptedBallot', prev.acceptedBallot, row.acceptedBallot);
      if (row.acceptedBallot === prev.acceptedBallot && row.accepted !== prev.accepted && !(prev.accepted === null)) {
        fail('accepted (changed without a higher ballot)', prev.acceptedBallot, row.acceptedBallot);
      }
      if (prev.committed && !row.committed) fail('committed', true, false);
    }
    this.viewId = viewId;
    this.last = cloneRow(row);
  }
}
