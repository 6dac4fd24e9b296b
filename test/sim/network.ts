// The simulated network: directed FIFO links between node ids, delays drawn from the seed, partitions,
// cut links (one-way or both ways), deaf nodes, paused receivers, crashed endpoints and bounded queues.
// Deterministic: every random choice comes from the injected Prng, and messages due in the same tick are
// handed out in send order.

import type { NodeId } from '../../node-agent/src/core/types.ts';
import type { Prng } from '../../node-agent/src/core/prng.ts';

export interface NetworkOptions {
  /** A message normally takes 1..maxDelayTicks ticks. */
  maxDelayTicks: number;
  /** Probability that a message takes longer: maxDelayTicks+1..longDelayMaxTicks. */
  longDelayChance: number;
  longDelayMaxTicks: number;
  /** Bound on the messages queued on one link; beyond it messages are dropped (and counted). */
  queueLimit: number;
}

export const DEFAULT_NETWORK: NetworkOptions = Object.freeze({
  maxDelayTicks: 3,
  longDelayChance: 0.01,
  longDelayMaxTicks: 12,
  queueLimit: 4096,
});

/** 'cut': a cut link (one-way or both ways) or a deaf receiver. */
export type DropReason = 'partition' | 'cut' | 'down' | 'overflow';

export interface NetworkStats {
  sent: number;
  delivered: number;
  dropped: Record<DropReason, number>;
  /** Longest queue seen on any link. */
  maxQueue: number;
  /** Messages of crashed senders kept in flight by crash(node, { lateTicks }) (delivered after the crash). */
  late: number;
}

/** A slow-down: links touching `nodes` (every link when null) take `extraDelay` more ticks, until `until`. */
export interface DelaySpike {
  extraDelay: number;
  until: number;
  nodes: ReadonlySet<NodeId> | null;
}

export interface InFlight<M> {
  from: NodeId;
  to: NodeId;
  message: M;
  sentAt: number;
  deliverAt: number;
}

interface Entry<M> extends InFlight<M> {
  seq: number;
  dropped: boolean;
}

export interface CrashOptions {
  /**
   * Late messages from the dead incarnation: a prefix (random length) of what it already sent on each
   * link is kept and still delivered, up to `lateTicks` later than planned (FIFO kept); the rest is lost.
   * 0 or absent: everything it sent that is still queued is lost.
   */
  lateTicks?: number;
}

export interface CrashResult {
  /** Messages lost (queued to or from the node). */
  dropped: number;
  /** Messages it sent that still arrive. */
  late: number;
}

interface Link<M> {
  queue: Entry<M>[];
  head: number;
  lastDeliverAt: number;
}

export class Network<M> {
  readonly options: NetworkOptions;
  readonly stats: NetworkStats = { sent: 0, delivered: 0, dropped: { partition: 0, cut: 0, down: 0, overflow: 0 }, maxQueue: 0, late: 0 };
  private nowTick = 0;
  private seq = 0;
  private readonly links = new Map<string, Link<M>>();
  private readonly heap: Entry<M>[] = [];
  private readonly down = new Set<NodeId>();
  /** node -> index of its partition group; null when the network is whole. */
  private groups: Map<NodeId, number> | null = null;
  private spikes: DelaySpike[] = [];
  /** Directed links that drop everything ('from>to'). */
  private readonly cutLinks = new Set<string>();
  /** Nodes that receive nothing (they still send). */
  private readonly deaf = new Set<NodeId>();
  /** Paused receivers: messages due to them wait, in link order, until release(). */
  private readonly held = new Map<NodeId, Entry<M>[]>();

  constructor(
    private readonly prng: Prng,
    options: Partial<NetworkOptions> = {},
    private readonly log: (line: string) => void = () => {},
  ) {
    this.options = { ...DEFAULT_NETWORK, ...options };
  }

  get now(): number {
    return this.nowTick;
  }

  /** Moves the clock (monotonic). */
  setTime(now: number): void {
    if (now < this.nowTick) throw new Error(`network time goes backwards: ${now} < ${this.nowTick}`);
    this.nowTick = now;
    if (this.spikes.length > 0) this.spikes = this.spikes.filter((s) => s.until > now);
  }

  /** Queues a message; returns false if it was dropped (partition, crashed endpoint, full queue). */
  send(from: NodeId, to: NodeId, message: M): boolean {
    this.stats.sent++;
    if (this.down.has(from) || this.down.has(to)) {
      this.stats.dropped.down++;
      return false;
    }
    if (!this.canReach(from, to)) {
      if (this.partitionBlocks(from, to)) this.stats.dropped.partition++;
      else this.stats.dropped.cut++;
      return false;
    }
    const link = this.link(from, to);
    const queued = link.queue.length - link.head;
    if (queued >= this.options.queueLimit) {
      this.stats.dropped.overflow++;
      this.log(`link ${from}->${to} overflow: ${queued} messages queued, dropped one (limit ${this.options.queueLimit})`);
      return false;
    }
    const deliverAt = Math.max(this.nowTick + this.drawDelay(from, to), link.lastDeliverAt);
    link.lastDeliverAt = deliverAt;
    const entry: Entry<M> = { from, to, message, sentAt: this.nowTick, deliverAt, seq: this.seq++, dropped: false };
    link.queue.push(entry);
    if (queued + 1 > this.stats.maxQueue) this.stats.maxQueue = queued + 1;
    this.heapPush(entry);
    return true;
  }

  /** The next message due (deliverAt <= now), in (deliverAt, send order); null when none is due. */
  deliverNext(): InFlight<M> | null {
    for (;;) {
      const top = this.heap[0];
      if (top === undefined || top.deliverAt > this.nowTick) return null;
      this.heapPop();
      if (top.dropped) continue;
      const parked = this.held.size > 0 ? this.held.get(top.to) : undefined;
      if (parked) {
        // A paused receiver: the message stays at the head of its link until release().
        parked.push(top);
        continue;
      }
      const link = this.link(top.from, top.to);
      // FIFO per link: the entry handed out is always the oldest queued one on its link.
      if (link.queue[link.head] !== top) throw new Error(`network FIFO broken on link ${top.from}->${top.to}`);
      link.head++;
      if (link.head > 64 && link.head * 2 > link.queue.length) {
        link.queue = link.queue.slice(link.head);
        link.head = 0;
      }
      this.stats.delivered++;
      return { from: top.from, to: top.to, message: top.message, sentAt: top.sentAt, deliverAt: top.deliverAt };
    }
  }

  /** Messages still queued (not yet delivered nor dropped). */
  inFlight(): number {
    let n = 0;
    for (const link of this.links.values()) n += link.queue.length - link.head;
    return n;
  }

  /** Queued messages on one link, oldest first (for tests and traces). */
  queued(from: NodeId, to: NodeId): InFlight<M>[] {
    const link = this.links.get(key(from, to));
    if (!link) return [];
    return link.queue.slice(link.head).map((e) => ({ from: e.from, to: e.to, message: e.message, sentAt: e.sentAt, deliverAt: e.deliverAt }));
  }

  /**
   * Splits the network: messages between different groups are dropped, including those already queued.
   * Nodes named in no group form one more group together. Returns how many queued messages were dropped.
   */
  partition(groups: readonly (readonly NodeId[])[]): number {
    const map = new Map<NodeId, number>();
    groups.forEach((g, i) => {
      for (const n of g) {
        if (map.has(n)) throw new Error(`node ${n} is in two partition groups`);
        map.set(n, i);
      }
    });
    this.groups = map;
    let dropped = 0;
    for (const [k, link] of this.links) {
      const [from, to] = parseKey(k);
      if (this.partitionBlocks(from, to)) dropped += this.clearLink(link);
    }
    this.stats.dropped.partition += dropped;
    return dropped;
  }

  heal(): void {
    this.groups = null;
  }

  isPartitioned(): boolean {
    return this.groups !== null;
  }

  /** Whether a message from `from` to `to` gets through: no partition between them, the link not cut, `to` not deaf. */
  canReach(from: NodeId, to: NodeId): boolean {
    if (this.partitionBlocks(from, to)) return false;
    if (from === to) return true;
    if (this.deaf.size > 0 && this.deaf.has(to)) return false;
    return this.cutLinks.size === 0 || !this.cutLinks.has(key(from, to));
  }

  /**
   * Cuts the directed link from -> to: its queued messages are lost and it drops everything until
   * restoreLink (the other direction still works: a one-way failure). Returns how many were lost.
   */
  cutLink(from: NodeId, to: NodeId): number {
    if (from === to) throw new Error(`cannot cut the loopback of node ${from}`);
    this.cutLinks.add(key(from, to));
    const link = this.links.get(key(from, to));
    const dropped = link ? this.clearLink(link) : 0;
    this.stats.dropped.cut += dropped;
    return dropped;
  }

  restoreLink(from: NodeId, to: NodeId): void {
    this.cutLinks.delete(key(from, to));
  }

  /** The directed links cut now, as [from, to] pairs. */
  cutLinkList(): [NodeId, NodeId][] {
    return [...this.cutLinks].map(parseKey);
  }

  /** The node receives nothing (queued messages to it are lost) until undeafen; it still sends. */
  deafen(node: NodeId): number {
    this.deaf.add(node);
    const dropped = this.clearWhere((from, to) => to === node && from !== node, 'cut');
    return dropped;
  }

  undeafen(node: NodeId): void {
    this.deaf.delete(node);
  }

  isDeaf(node: NodeId): boolean {
    return this.deaf.has(node);
  }

  /** Every cut link and every deaf node is whole again (partitions are healed by heal()). */
  restoreAll(): void {
    this.cutLinks.clear();
    this.deaf.clear();
  }

  /**
   * The receiver is paused: messages to it are kept (still counted in their link's queue, so the queue
   * bound applies) and handed out only after release().
   */
  hold(node: NodeId): void {
    if (!this.held.has(node)) this.held.set(node, []);
  }

  /** The paused receiver runs again: what waited for it is due now, in link order, before anything sent later. */
  release(node: NodeId): void {
    const parked = this.held.get(node);
    if (!parked) return;
    this.held.delete(node);
    for (const e of parked) {
      if (e.dropped) continue;
      e.deliverAt = this.nowTick;
      this.heapPush(e);
    }
  }

  isHeld(node: NodeId): boolean {
    return this.held.has(node);
  }

  /**
   * The node crashed: drops every message queued to it and (unless `lateTicks` keeps some of them) every
   * message it sent that is still queued; it sends and receives nothing until revived.
   */
  crash(node: NodeId, options: CrashOptions = {}): CrashResult {
    this.down.add(node);
    this.held.delete(node);
    const lateTicks = options.lateTicks ?? 0;
    if (lateTicks <= 0) return { dropped: this.clearWhere((from, to) => from === node || to === node), late: 0 };
    let dropped = this.clearWhere((from, to) => to === node);
    let late = 0;
    for (const [k, link] of this.links) {
      const [from, to] = parseKey(k);
      if (from !== node || to === node) continue;
      const queued = link.queue.slice(link.head);
      if (queued.length === 0) continue;
      const keep = this.prng.int(0, queued.length);
      this.clearLink(link);
      this.stats.dropped.down += queued.length - keep;
      dropped += queued.length - keep;
      // The kept prefix goes out again as new entries, each up to lateTicks later, FIFO preserved.
      let last = 0;
      for (const old of queued.slice(0, keep)) {
        const deliverAt = Math.max(old.deliverAt + this.prng.int(0, lateTicks), last, this.nowTick);
        last = deliverAt;
        const entry: Entry<M> = { ...old, deliverAt, seq: this.seq++, dropped: false };
        link.queue.push(entry);
        this.heapPush(entry);
        late++;
      }
      link.lastDeliverAt = last;
    }
    this.stats.late += late;
    return { dropped, late };
  }

  /**
   * The node exited on its own: messages it already sent still arrive (its connections were flushed and
   * closed), messages queued to it are dropped.
   */
  exit(node: NodeId): number {
    this.down.add(node);
    return this.clearWhere((_from, to) => to === node);
  }

  revive(node: NodeId): void {
    this.down.delete(node);
  }

  isDown(node: NodeId): boolean {
    return this.down.has(node);
  }

  addSpike(spike: { extraDelay: number; lasts: number; nodes?: readonly NodeId[] | null }): void {
    this.spikes.push({
      extraDelay: spike.extraDelay,
      until: this.nowTick + spike.lasts,
      nodes: spike.nodes ? new Set(spike.nodes) : null,
    });
  }

  clearSpikes(): void {
    this.spikes = [];
  }

  activeSpikes(): readonly DelaySpike[] {
    return this.spikes;
  }

  private drawDelay(from: NodeId, to: NodeId): number {
    const o = this.options;
    let delay = this.prng.int(1, Math.max(1, o.maxDelayTicks));
    if (o.longDelayChance > 0 && o.longDelayMaxTicks > o.maxDelayTicks && this.prng.chance(o.longDelayChance)) {
      delay = this.prng.int(o.maxDelayTicks + 1, o.longDelayMaxTicks);
    }
    for (const s of this.spikes) {
      if (s.nodes === null || s.nodes.has(from) || s.nodes.has(to)) delay += s.extraDelay;
    }
    return delay;
  }

  private clearWhere(pred: (from: NodeId, to: NodeId) => boolean, reason: DropReason = 'down'): number {
    let dropped = 0;
    for (const [k, link] of this.links) {
      const [from, to] = parseKey(k);
      if (pred(from, to)) dropped += this.clearLink(link);
    }
    this.stats.dropped[reason] += dropped;
    return dropped;
  }

  private partitionBlocks(from: NodeId, to: NodeId): boolean {
    if (this.groups === null) return false;
    return (this.groups.get(from) ?? -1) !== (this.groups.get(to) ?? -1);
  }

  private clearLink(link: Link<M>): number {
    let n = 0;
    for (let i = link.head; i < link.queue.length; i++) {
      link.queue[i]!.dropped = true;
      n++;
    }
    link.queue = [];
    link.head = 0;
    // A new connection: later messages need not wait behind the dropped ones.
    link.lastDeliverAt = 0;
    return n;
  }

  private link(from: NodeId, to: NodeId): Link<M> {
    const k = key(from, to);
    let link = this.links.get(k);
    if (!link) {
      link = { queue: [], head: 0, lastDeliverAt: 0 };
      this.links.set(k, link);
    }
    return link;
  }

  // Binary min-heap on (deliverAt, seq).
  private heapPush(e: Entry<M>): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  private heapPop(): void {
    const h = this.heap;
    const last = h.pop()!;
    if (h.length === 0) return;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && before(h[l]!, h[m]!)) m = l;
      if (r < h.length && before(h[r]!, h[m]!)) m = r;
      if (m === i) break;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
  }
}

function before<M>(a: Entry<M>, b: Entry<M>): boolean {
  return a.deliverAt !== b.deliverAt ? a.deliverAt < b.deliverAt : a.seq < b.seq;
}

function key(from: NodeId, to: NodeId): string {
  return `${from}>${to}`;
}

function parseKey(k: string): [NodeId, NodeId] {
  const i = k.indexOf('>');
  return [Number(k.slice(0, i)), Number(k.slice(i + 1))];
}
