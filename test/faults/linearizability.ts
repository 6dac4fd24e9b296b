// Linearizability checker for key-value histories recorded by the fault-injection tests.
//
// Model: every key is an independent register whose value is a string or null (absent). put(k, v)
// sets it, delete(k) sets it to null, get(k) returns it. A history is linearizable when the
// operations that happened can be put in one total order that respects real time (an operation that
// completed before another was invoked comes first) and in which every get returns the value left by
// the writes before it.
//
// Outcomes. 'ok': the operation happened inside its [invoke, complete] interval. 'fail': a definite
// error, it did not happen: dropped. 'info': indeterminate (timeout, connection error): a write may
// have happened at any time after its invocation, or never, so it is kept with an infinite completion
// time and may be left out of the linearization; an info get's result is unknown and constrains
// nothing: dropped.
//
// Algorithm.
// - Locality (Herlihy & Wing 1990), P-compositionality in Lowe's terms: a history is linearizable iff
//   each key's sub-history is, so every key is checked on its own, in a much smaller search space.
// - For one key: the Wing & Gong search ("Testing and verifying concurrent objects", J. Parallel and
//   Distributed Computing 17, 1993) with the improvements of Lowe ("Testing for linearizability",
//   Concurrency and Computation: Practice and Experience 29(4), 2017), as in Porcupine and Knossos.
//   A depth-first search extends a linearization one operation at a time. The invocation and
//   completion events of the ok operations not yet linearized are kept in time order in a doubly
//   linked list (an operation is lifted out when linearized and put back on backtracking, "dancing
//   links"). Lowe's "just-in-time" linearization: the candidates for the next step are the operations
//   invoked before the first completion left in the list, that of the earliest-completing pending ok
//   operation, which must itself be linearized before anything invoked after it; a configuration with
//   no candidate the register allows is a dead end. Info writes complete at +infinity: they are not in
//   the list, are candidates once invoked, and may be left out: the search succeeds as soon as every
//   ok operation is linearized.
// - Memoisation (Lowe): what can follow depends only on which operations are linearized and on the
//   register value, so each (linearized set, value) configuration is explored once. The set is a
//   bitset with an incrementally maintained Zobrist hash; VisitedSet stores configurations compactly.
// - Register-specific rules, each of which keeps some linearization if there is one (checked against
//   a brute-force search in the tests):
//   (1) a pending get that can be linearized now (a candidate reading the current value) is, and
//       nothing else is tried in that configuration: moving it to the front of any linearization from
//       there keeps that valid (a get changes nothing, and what must precede it is already linearized);
//   (2) an optional write is only linearized when a candidate get reads its value, which rule (1) then
//       linearizes right after it: an optional write overwritten (or last) before anyone reads it can
//       be dropped. Without this every subset of the unread info writes would be a configuration;
//   (3) optional writes of the same value are interchangeable (their completion is +infinity): they
//       are used in invocation order. The optional deletes (all of value null, the common case) are
//       then summed up by how many were used, and a configuration dominates the same one with more of
//       them used: it is not explored again;
//   (4) a write may not overwrite the current value while a pending get must still read it and no
//       pending write can produce it again: that get could never be linearized. A get reading a value
//       that nothing writes (nor is initial) fails the key at once;
//   (5) before the search, a read from the future or a stale read fails the key at once (see
//       hasImpossibleRead), without exploring every order of what precedes it.
// - The search is iterative (explicit stack), so long histories cannot overflow the call stack, and it
//   gives up with 'unknown' after a configurable number of explored configurations rather than run for
//   hours (many concurrent writes whose order matters still make the space exponential).
// - Explanation: when a key is not linearizable, the smallest k such that the first k ok operations by
//   completion time cannot be linearized (the other writes invoked by then being optional, like info
//   writes; later gets dropped) is found by a search over k; the k-th operation and those concurrent
//   with it are reported. This is monotone in k: a linearization for k+1 operations cut before the
//   first operation invoked after the k-th completed, and without the (k+1)-th if it is a get, is one
//   for k. A failed search also proves the prefix it got furthest through (all of its first r
//   operations linearized) linearizable, so the search over k starts just above it, usually its answer.
//
// Ties: an invocation and a completion at the same timestamp are taken as concurrent (invocations sort
// first), the lenient reading for millisecond clocks: the checker never reports a violation that rests
// on the order of two events recorded at the same instant.

export type KvOp = {
  id: number;
  process: number;
  kind: 'put' | 'delete' | 'get';
  key: string;
  value: string | null;
  invokeMs: number;
  completeMs: number | null;
  outcome: 'ok' | 'fail' | 'info';
};

export interface KeyVerdict {
  key: string;
  linearizable: boolean | 'unknown';
  /** Operations on the key that the search considered: all but failed operations and info gets. */
  operations: number;
  /** Configurations the search explored (the verdict's search, not the explanation's); 0 when a check before the search decided. */
  statesExplored: number;
  /** when not linearizable: a short, human explanation: the smallest prefix of ok operations (by completion time) that cannot be linearized, and the operations concurrent with the last one, formatted one per line like `p3 get(k1) -> "v7" [1203.0 ms .. 1210.5 ms] ok` */
  explanation?: string;
}

export interface Verdict {
  linearizable: boolean | 'unknown';
  keys: KeyVerdict[];
}

export interface CheckOptions {
  /** Initial value of keys; a key not named starts absent (null). */
  initial?: Record<string, string | null>;
  /** Bound on the configurations explored per key: past it the key is 'unknown'. A failing key's explanation gets as many again. */
  maxStates?: number;
}

export const DEFAULT_MAX_STATES = 5_000_000;

/** One line for an operation, e.g. `p3 get(k1) -> "v7" [1203.0 ms .. 1210.5 ms] ok`. */
export function formatOp(op: KvOp): string {
  const show = (v: string | null): string => (v === null ? 'null' : JSON.stringify(v));
  let call: string;
  if (op.kind === 'put') call = `put(${op.key}, ${show(op.value)})`;
  else if (op.kind === 'delete') call = `delete(${op.key})`;
  else call = `get(${op.key}) -> ${op.outcome === 'ok' ? show(op.value) : '?'}`;
  const end = op.completeMs === null ? '?' : `${op.completeMs.toFixed(1)} ms`;
  return `p${op.process} ${call} [${op.invokeMs.toFixed(1)} ms .. ${end}] ${op.outcome}`;
}

/** Checks a history of a key-value store whose keys are registers. Throws on a malformed history. */
export function checkLinearizable(history: KvOp[], options: CheckOptions = {}): Verdict {
  validate(history);
  const maxStates = options.maxStates ?? DEFAULT_MAX_STATES;
  if (!(maxStates >= 1)) throw new Error(`maxStates must be at least 1 (got ${maxStates})`);

  const byKey = new Map<string, KvOp[]>();
  for (const op of history) {
    let list = byKey.get(op.key);
    if (!list) byKey.set(op.key, (list = []));
    list.push(op);
  }
  const keys: KeyVerdict[] = [];
  for (const key of [...byKey.keys()].sort()) {
    const initial = options.initial && Object.hasOwn(options.initial, key) ? (options.initial[key] ?? null) : null;
    keys.push(checkKey(key, byKey.get(key)!, initial, maxStates));
  }
  const linearizable = keys.some((k) => k.linearizable === false)
    ? false
    : keys.some((k) => k.linearizable === 'unknown') ? 'unknown' : true;
  return { linearizable, keys };
}

// ---------------------------------------------------------------------------------------------
// Validation

function validate(history: KvOp[]): void {
  const ids = new Set<number>();
  for (const op of history) {
    const where = `op ${op.id}`;
    if (typeof op.id !== 'number' || !Number.isFinite(op.id)) throw new Error(`${where}: field id is not a finite number`);
    if (ids.has(op.id)) throw new Error(`${where}: field id is a duplicate (two operations have id ${op.id})`);
    ids.add(op.id);
    if (op.kind !== 'put' && op.kind !== 'delete' && op.kind !== 'get') throw new Error(`${where}: field kind is ${JSON.stringify(op.kind)}, not put, delete or get`);
    if (op.outcome !== 'ok' && op.outcome !== 'fail' && op.outcome !== 'info') throw new Error(`${where}: field outcome is ${JSON.stringify(op.outcome)}, not ok, fail or info`);
    if (typeof op.key !== 'string') throw new Error(`${where}: field key is not a string`);
    if (op.kind === 'put' && typeof op.value !== 'string') throw new Error(`${where}: field value of a put must be a string`);
    if (op.value !== null && typeof op.value !== 'string') throw new Error(`${where}: field value must be a string or null`);
    if (typeof op.invokeMs !== 'number' || !Number.isFinite(op.invokeMs)) throw new Error(`${where}: field invokeMs is not a finite number`);
    if (op.completeMs === null || op.completeMs === undefined) {
      if (op.outcome !== 'info') throw new Error(`${where}: field completeMs is null but the outcome is ${op.outcome} (only info operations may lack a completion)`);
    } else {
      if (typeof op.completeMs !== 'number' || Number.isNaN(op.completeMs)) throw new Error(`${where}: field completeMs is not a number`);
      if (op.completeMs < op.invokeMs) throw new Error(`${where}: field completeMs (${op.completeMs}) is before invokeMs (${op.invokeMs})`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One key

const PUT = 0;
const DELETE = 1;
const GET = 2;

/** An operation as the search sees it; values are interned (0 is null). */
interface SearchOp {
  kind: number;
  /** The value a put writes or a get read; 0 (null) for a delete. */
  value: number;
  invoke: number;
  /** +Infinity for an optional operation (an info write, or a write after the prefix being explained). */
  complete: number;
  /** Must be linearized (ok); otherwise it may be left out. */
  mandatory: boolean;
  /** A mandatory operation's position among the key's ok operations by completion time; -1 otherwise. */
  rank: number;
}

interface SearchResult {
  result: boolean | 'unknown';
  /** Configurations explored. */
  states: number;
  /** Some configuration had the mandatory operations of rank below this all linearized. */
  reached: number;
}

function checkKey(key: string, ops: KvOp[], initialValue: string | null, maxStates: number): KeyVerdict {
  // Failed operations did not happen; an info get's result is unknown.
  const considered = ops.filter((op) => op.outcome === 'ok' || (op.outcome === 'info' && op.kind !== 'get'));
  const oks = considered.filter((op) => op.outcome === 'ok').sort(byCompletion);
  const rank = new Map(oks.map((op, i) => [op, i]));

  const ids = new Map<string, number>();
  const intern = (v: string | null): number => {
    if (v === null) return 0;
    let id = ids.get(v);
    if (id === undefined) ids.set(v, (id = ids.size + 1));
    return id;
  };
  const toSearch = (op: KvOp, mandatory: boolean): SearchOp => ({
    kind: op.kind === 'put' ? PUT : op.kind === 'delete' ? DELETE : GET,
    value: op.kind === 'delete' ? 0 : intern(op.value),
    invoke: op.invokeMs,
    complete: mandatory ? op.completeMs! : Infinity,
    mandatory,
    rank: mandatory ? rank.get(op)! : -1,
  });
  const initial = intern(initialValue);

  const main = search(considered.map((op) => toSearch(op, op.outcome === 'ok')), initial, maxStates);
  const verdict: KeyVerdict = { key, linearizable: main.result, operations: considered.length, statesExplored: main.states };
  if (main.result !== false) return verdict;

  // The smallest failing prefix of the ok operations by completion time; the searches for it share
  // one budget of maxStates configurations (past it, the shortest prefix known to fail is reported).
  let budget = maxStates;
  const searchPrefix = (k: number): SearchResult => {
    const cut = oks[k - 1]!.completeMs!;
    const searchOps: SearchOp[] = [];
    for (const op of considered) {
      if (op.outcome === 'ok' && rank.get(op)! < k) searchOps.push(toSearch(op, true));
      // Other writes invoked by then may have taken effect; gets outside the prefix constrain nothing.
      else if (op.kind !== 'get' && op.invokeMs <= cut) searchOps.push(toSearch(op, false));
    }
    const r = search(searchOps, initial, budget);
    budget -= r.states;
    return r;
  };
  // Prefixes shorter than lo are linearizable (or undecided); the prefix of length hi is not. The
  // answer is usually at or just above lo, and searches that fail cost far more than those that
  // succeed: gallop up from lo until a prefix fails, then bisect.
  let lo = Math.min(main.reached + 1, oks.length);
  let hi = oks.length;
  let step = 1;
  let galloping = true;
  let minimal = true;
  while (lo < hi) {
    const probe = galloping ? Math.min(lo + step - 1, hi - 1) : (lo + hi) >>> 1;
    const r = searchPrefix(probe);
    if (r.result === 'unknown') {
      minimal = false;
      break;
    }
    if (r.result === false) {
      hi = probe;
      lo = Math.max(lo, Math.min(r.reached + 1, hi));
      galloping = false;
    } else {
      lo = probe + 1;
      step *= 2;
    }
  }
  verdict.explanation = explain(key, ops, oks, hi, minimal, initialValue);
  return verdict;
}

function byCompletion(a: KvOp, b: KvOp): number {
  return a.completeMs! - b.completeMs! || a.invokeMs - b.invokeMs || a.id - b.id;
}

const MAX_LISTED = 20;

function explain(key: string, ops: KvOp[], oks: KvOp[], k: number, minimal: boolean, initialValue: string | null): string {
  const last = oks[k - 1]!;
  const start = last.invokeMs;
  const end = last.completeMs!;
  const lines: string[] = [
    `key ${key}: the first ${k} ok operation${k === 1 ? '' : 's'} by completion time cannot be linearized` +
      `${minimal ? '' : ' (a shorter prefix may not be either: the search bound ran out)'}; the last of them is`,
    `  ${formatOp(last)}`,
  ];
  const show = (v: string | null): string => (v === null ? 'null' : JSON.stringify(v));
  const earlierWrites = oks.filter((op) => op.kind !== 'get' && op.completeMs! < start);
  if (earlierWrites.length === 0) {
    lines.push(`no write on ${key} completed before it was invoked (initial value ${show(initialValue)})`);
  } else {
    lines.push(`the latest writes on ${key} completed before it was invoked:`);
    for (const op of earlierWrites.slice(-3)) lines.push(`  ${formatOp(op)}`);
  }
  // Concurrent by the recorded intervals (an info operation without a completion runs on forever).
  const relevant = ops.filter((op) => op !== last && op.outcome !== 'fail' && !(op.kind === 'get' && op.outcome === 'info'));
  const concurrent = relevant
    .filter((op) => op.invokeMs <= end && (op.completeMs ?? Infinity) >= start && !(op.completeMs === null && op.invokeMs < start))
    .sort((a, b) => a.invokeMs - b.invokeMs || a.id - b.id);
  if (concurrent.length === 0) {
    lines.push('no operation on it was concurrent with it');
  } else {
    lines.push('operations concurrent with it:');
    for (const op of concurrent.slice(0, MAX_LISTED)) lines.push(`  ${formatOp(op)}`);
    if (concurrent.length > MAX_LISTED) lines.push(`  ... and ${concurrent.length - MAX_LISTED} more`);
  }
  // Info writes invoked before it and not concurrent by their records may still take effect at any time.
  const listed = new Set(concurrent);
  const pendingInfo = relevant
    .filter((op) => op.outcome === 'info' && op.invokeMs < start && !listed.has(op))
    .sort((a, b) => b.invokeMs - a.invokeMs || b.id - a.id);
  if (pendingInfo.length > 0) {
    lines.push(`indeterminate writes invoked earlier, which may take effect at any time (${pendingInfo.length}${pendingInfo.length > 5 ? ', the latest 5' : ''}):`);
    for (const op of pendingInfo.slice(0, 5)) lines.push(`  ${formatOp(op)}`);
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// The search

/**
 * Is there a linearization of the mandatory operations, with any subset of the optional ones, that
 * respects real time and the register's semantics, starting from the value `initial`?
 */
function search(input: SearchOp[], initial: number, maxStates: number): SearchResult {
  // Operation indices: mandatory operations [0, m), optional puts [m, firstDelete), optional deletes
  // [firstDelete, n), each group in invocation order. Bitsets cover the first two groups (ok operations
  // low, so stored sets are short); optional deletes are counted instead (rule 3).
  const group = (op: SearchOp): number => (op.mandatory ? 0 : op.kind !== DELETE ? 1 : 2);
  const ops = [...input].sort((a, b) => group(a) - group(b) || a.invoke - b.invoke);
  const n = ops.length;
  const m = ops.filter((op) => op.mandatory).length;
  const firstDelete = m + ops.filter((op) => !op.mandatory && op.kind !== DELETE).length;
  if (m === 0) return { result: true, states: 0, reached: 0 };

  const kind = Int32Array.from(ops, (op) => op.kind);
  const value = Int32Array.from(ops, (op) => op.value);
  const invoke = Float64Array.from(ops, (op) => op.invoke);
  const complete = Float64Array.from(ops, (op) => op.complete);
  const rank = Int32Array.from(ops, (op) => op.rank);
  const zobrist = new Int32Array(n);
  for (let i = 0; i < n; i++) zobrist[i] = mix32(Math.imul(i + 1, 0x9e3779b9));

  // Pending writers and pending readers (ok gets) of each value, for rule (4), and rule (5).
  let values = initial + 1;
  for (const op of ops) values = Math.max(values, op.value + 1);
  const writers = new Int32Array(values);
  const readers = new Int32Array(values);
  for (let i = 0; i < n; i++) {
    if (kind[i] === GET) readers[value[i]!]!++;
    else writers[value[i]!]!++;
  }
  for (let v = 0; v < values; v++) {
    if (readers[v]! > 0 && writers[v] === 0 && v !== initial) return { result: false, states: 0, reached: 0 };
  }
  if (hasImpossibleRead(ops, initial, values)) return { result: false, states: 0, reached: 0 };

  // The event list holds the mandatory operations only: node i < m is the invocation of operation i,
  // node m + i its completion, node 2m the head. Invocations come before completions at the same
  // instant, completions at the same instant by rank. Optional operations complete at +infinity and so
  // never end the candidates; each is a candidate once invoked (by the first completion in the list).
  const HEAD = 2 * m;
  const END = -1;
  const nodes = Array.from({ length: 2 * m }, (_, node) => node);
  const time = (node: number): number => (node < m ? invoke[node]! : complete[node - m]!);
  nodes.sort((a, b) => time(a) - time(b) || Number(a >= m) - Number(b >= m) || (a < m ? a - b : rank[a - m]! - rank[b - m]!));
  const next = new Int32Array(2 * m + 1);
  const prev = new Int32Array(2 * m + 1);
  let tail = HEAD;
  for (const node of nodes) {
    next[tail] = node;
    prev[node] = tail;
    tail = node;
  }
  next[tail] = END;
  // Dancing links: an operation is lifted out (invocation, then completion) and put back in reverse order.
  const unlink = (node: number): void => {
    const p = prev[node]!;
    const q = next[node]!;
    next[p] = q;
    if (q !== END) prev[q] = p;
  };
  const relink = (node: number): void => {
    const p = prev[node]!;
    const q = next[node]!;
    next[p] = node;
    if (q !== END) prev[q] = node;
  };

  // Rule (3): the optional writes of each value, in invocation order, are used in that order; used[v]
  // of them are linearized. chain[chainStart[v] ..] lists them.
  const chainStart = new Int32Array(values + 1);
  for (let i = m; i < n; i++) chainStart[value[i]! + 1]!++;
  for (let v = 0; v < values; v++) chainStart[v + 1]! += chainStart[v]!;
  const chain = new Int32Array(n - m);
  const fill = chainStart.slice(0, values);
  for (let i = m; i < n; i++) chain[fill[value[i]!]!++] = i; // by index, so in invocation order
  const used = new Int32Array(values);

  const bits = new Uint32Array(Math.ceil(firstDelete / 32));
  let setHash = 0;
  const visited = new VisitedSet();
  // The current path: the operation linearized at each depth and the register value before it; and,
  // for the configuration at each depth, its candidate steps (in `candidates`) and the next to try.
  const stackOp = new Int32Array(n);
  const stackValue = new Int32Array(n);
  const frameStart = new Int32Array(n + 2);
  const frameEnd = new Int32Array(n + 1);
  const frameNext = new Int32Array(n + 1);
  let candidates = new Int32Array(1024);
  const valueSeen = new Int32Array(values); // stamps, to list one optional writer per value read
  let stamp = 0;
  let depth = 0;
  let state = initial;
  let remaining = m;
  let reached = 0;

  /** Linearizes operation i now, unless rule (4) or the memo rules it out; 'full' beyond the bound. */
  const push = (i: number): 'pushed' | 'skipped' | 'full' => {
    const k = kind[i]!;
    const v = value[i]!;
    const after = k === GET ? state : v;
    if (after !== state && readers[state]! > 0 && writers[state] === 0) return 'skipped'; // rule (4)
    const counted = i >= firstDelete;
    if (!counted) {
      bits[i >>> 5]! |= 1 << (i & 31);
      setHash ^= zobrist[i]!;
    }
    if (!visited.add(bits, setHash, after, used[0]! + (counted ? 1 : 0))) {
      if (!counted) {
        bits[i >>> 5]! &= ~(1 << (i & 31));
        setHash ^= zobrist[i]!;
      }
      return 'skipped';
    }
    if (visited.explored > maxStates) return 'full';
    stackOp[depth] = i;
    stackValue[depth] = state;
    depth++;
    state = after;
    if (k === GET) readers[v]!--;
    else writers[v]!--;
    if (i < m) {
      unlink(i);
      unlink(m + i);
      remaining--;
    } else {
      used[v]!++;
    }
    return 'pushed';
  };
  /** Undoes the last step. */
  const pop = (): void => {
    depth--;
    const i = stackOp[depth]!;
    const v = value[i]!;
    state = stackValue[depth]!;
    if (i < firstDelete) {
      bits[i >>> 5]! &= ~(1 << (i & 31));
      setHash ^= zobrist[i]!;
    }
    if (kind[i] === GET) readers[v]!++;
    else writers[v]!++;
    if (i < m) {
      relink(m + i);
      relink(i);
      remaining++;
    } else {
      used[v]!--;
    }
  };
  const addCandidate = (at: number, i: number): void => {
    if (at === candidates.length) {
      const bigger = new Int32Array(candidates.length * 2);
      bigger.set(candidates);
      candidates = bigger;
    }
    candidates[at] = i;
  };

  for (;;) {
    // A new configuration: the operations linearized so far, and the register value `state`.
    if (remaining === 0) return { result: true, states: visited.explored, reached: m };
    // The candidates: the pending ok operations invoked before the first completion in the list, and
    // the optional writes invoked by then.
    let frontier = next[HEAD]!;
    let read = -1;
    while (frontier < m) {
      if (read < 0 && kind[frontier] === GET && value[frontier] === state) read = frontier;
      frontier = next[frontier]!;
    }
    const deadline = complete[frontier - m]!;
    reached = Math.max(reached, rank[frontier - m]!);
    const start = frameStart[depth]!;
    let end = start;
    if (read >= 0) {
      addCandidate(end++, read); // rule (1): the only step tried here
    } else {
      stamp++;
      for (let e = next[HEAD]!; e < m; e = next[e]!) {
        if (kind[e] !== GET) {
          addCandidate(end++, e);
        } else if (valueSeen[value[e]!] !== stamp) {
          // Rule (2): an optional write only when a candidate get reads its value; rule (3): the next of its value.
          const v = value[e]!;
          valueSeen[v] = stamp;
          const c = chainStart[v]! + used[v]!;
          if (c < chainStart[v + 1]! && invoke[chain[c]!]! <= deadline) addCandidate(end++, chain[c]!);
        }
      }
    }
    frameEnd[depth] = end;
    frameNext[depth] = start;

    // Try the candidates of the deepest configuration in turn; backtrack when they are exhausted.
    for (;;) {
      if (frameNext[depth]! === frameEnd[depth]!) {
        if (depth === 0) return { result: false, states: visited.explored, reached };
        pop();
        continue;
      }
      const i = candidates[frameNext[depth]!++]!;
      const r = push(i);
      if (r === 'full') return { result: 'unknown', states: visited.explored, reached };
      if (r === 'pushed') {
        frameStart[depth] = frameEnd[depth - 1]!;
        break;
      }
    }
  }
}

/**
 * Rule (5), a check before the search, for each ok get of a value v that no optional write invoked
 * before the get completes could write: it fails if no ok write of v is invoked before the get
 * completes and v is not the initial value (a read from the future), or if each such write (and the
 * initial value, if v is it) is followed in real time by another write that completes before the get
 * is invoked (a stale read: in any order, the last write before the get would be followed by another
 * one before the get). It is enough to check the write of v that completes last: a write invoked after
 * it and completed before the get also follows every other one.
 */
function hasImpossibleRead(ops: SearchOp[], initial: number, values: number): boolean {
  const optionalFrom = new Float64Array(values).fill(Infinity); // earliest invocation of an optional write of each value
  const byValue: SearchOp[][] = Array.from({ length: values }, () => []);
  const writes: SearchOp[] = [];
  for (const op of ops) {
    if (op.kind === GET) continue;
    if (!op.mandatory) {
      optionalFrom[op.value] = Math.min(optionalFrom[op.value]!, op.invoke);
    } else {
      writes.push(op);
      byValue[op.value]!.push(op);
    }
  }
  /** Index of the first element of `sorted` (ascending invocations) invoked after `t`. */
  const invokedAfter = (sorted: SearchOp[], t: number): number => {
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (sorted[mid]!.invoke > t) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  };
  // For the ok writes by invocation: the earliest completion from index j on.
  writes.sort((a, b) => a.invoke - b.invoke);
  const firstCompletion = new Float64Array(writes.length + 1).fill(Infinity);
  for (let j = writes.length - 1; j >= 0; j--) firstCompletion[j] = Math.min(firstCompletion[j + 1]!, writes[j]!.complete);
  // For the ok writes of each value by invocation: the latest completion up to index j.
  const latestCompletion = byValue.map((list) => {
    list.sort((a, b) => a.invoke - b.invoke);
    const latest = new Float64Array(list.length);
    let m = -Infinity;
    list.forEach((op, j) => (latest[j] = m = Math.max(m, op.complete)));
    return latest;
  });

  for (const get of ops) {
    if (get.kind !== GET || !get.mandatory || optionalFrom[get.value]! <= get.complete) continue;
    const own = byValue[get.value]!;
    const before = invokedAfter(own, get.complete); // the writes of the value that may precede the get
    if (before === 0 && get.value !== initial) return true;
    const last = before === 0 ? -Infinity : latestCompletion[get.value]![before - 1]!;
    if (firstCompletion[invokedAfter(writes, last)]! < get.invoke) return true;
  }
  return false;
}

/** Murmur3's 32-bit finaliser. */
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) | 0;
}

/**
 * The configurations seen: (bitset, value) keys, exact (hash collisions are resolved by comparing the
 * sets), each with the fewest optional deletes used with which it was explored (rule 3: fewer
 * dominates). Open addressing over entry indices; a set is stored as its words from the first that is
 * not all ones to the last that is not zero (a canonical form: equal sets are stored identically), in
 * one growing word pool, which keeps millions of entries affordable.
 */
class VisitedSet {
  /** Configurations explored: entries added, and entries lowered to fewer deletes used. */
  explored = 0;
  private size = 0;
  private slots = new Int32Array(1 << 12); // entry index + 1; 0 = empty
  private hashes = new Int32Array(1 << 11);
  private values = new Int32Array(1 << 11);
  private used = new Int32Array(1 << 11);
  private los = new Int32Array(1 << 11);
  private lens = new Int32Array(1 << 11);
  private offsets = new Int32Array(1 << 11);
  private pool = new Uint32Array(1 << 14);
  private poolUsed = 0;

  /** Records the configuration; false if it, or one that dominates it, was explored already. */
  add(bits: Uint32Array, setHash: number, value: number, deletesUsed: number): boolean {
    const words = bits.length;
    let lo = 0;
    while (lo < words && bits[lo] === 0xffffffff) lo++;
    let hi = words;
    while (hi > lo && bits[hi - 1] === 0) hi--;
    const len = hi - lo;
    const h = mix32(setHash ^ Math.imul(value + 1, 0x27d4eb2d));
    const mask = this.slots.length - 1;
    let slot = h & mask;
    for (let e = this.slots[slot]!; e !== 0; e = this.slots[slot]!) {
      const j = e - 1;
      if (this.hashes[j] === h && this.values[j] === value && this.los[j] === lo && this.lens[j] === len) {
        const off = this.offsets[j]!;
        let same = true;
        for (let w = 0; w < len; w++) {
          if (this.pool[off + w] !== bits[lo + w]) {
            same = false;
            break;
          }
        }
        if (same) {
          if (this.used[j]! <= deletesUsed) return false;
          this.used[j] = deletesUsed;
          this.explored++;
          return true;
        }
      }
      slot = (slot + 1) & mask;
    }

    const j = this.size;
    if (j === this.hashes.length) this.growEntries();
    if (this.poolUsed + len > this.pool.length) {
      const bigger = new Uint32Array(Math.max(this.pool.length * 2, this.poolUsed + len));
      bigger.set(this.pool.subarray(0, this.poolUsed));
      this.pool = bigger;
    }
    this.pool.set(bits.subarray(lo, hi), this.poolUsed);
    this.hashes[j] = h;
    this.values[j] = value;
    this.used[j] = deletesUsed;
    this.los[j] = lo;
    this.lens[j] = len;
    this.offsets[j] = this.poolUsed;
    this.poolUsed += len;
    this.slots[slot] = j + 1;
    this.size++;
    this.explored++;
    if (this.size * 2 > this.slots.length) this.rehash();
    return true;
  }

  private growEntries(): void {
    const grow = (a: Int32Array<ArrayBuffer>): Int32Array<ArrayBuffer> => {
      const b = new Int32Array(a.length * 2);
      b.set(a);
      return b;
    };
    this.hashes = grow(this.hashes);
    this.values = grow(this.values);
    this.used = grow(this.used);
    this.los = grow(this.los);
    this.lens = grow(this.lens);
    this.offsets = grow(this.offsets);
  }

  private rehash(): void {
    const slots = new Int32Array(this.slots.length * 2);
    const mask = slots.length - 1;
    for (let j = 0; j < this.size; j++) {
      let slot = this.hashes[j]! & mask;
      while (slots[slot] !== 0) slot = (slot + 1) & mask;
      slots[slot] = j + 1;
    }
    this.slots = slots;
  }
}
