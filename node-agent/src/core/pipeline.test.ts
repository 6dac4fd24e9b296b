import test from 'ava';
import fc from 'fast-check';
import { binomialPipelineSchedule, blocksFor, scheduleFor, type PipelineStep } from './pipeline.ts';

/** The bound the schedule promises: blockCount + ceil(log2 memberCount) - 1 steps (none for one member). */
function promisedStepCount(memberCount: number, blockCount: number): number {
  if (memberCount === 1) return 0;
  let ceilLog2 = 0;
  while (2 ** ceilLog2 < memberCount) ceilLog2++;
  return blockCount + ceilLog2 - 1;
}

/** Every rule a schedule must follow, as a list of human-readable violations (empty when valid). */
function violationsOf(memberCount: number, blockCount: number, schedule: PipelineStep[]): string[] {
  const violations: string[] = [];
  const holds = Array.from({ length: memberCount }, (_, rank) => new Array<boolean>(blockCount).fill(rank === 0));
  const receiptCounts = Array.from({ length: memberCount }, () => new Array<number>(blockCount).fill(0));
  schedule.forEach((pipelineStep, step) => {
    const senders = new Set<number>();
    const receivers = new Set<number>();
    if (pipelineStep.transfers.length === 0) violations.push(`step ${step} is empty`);
    for (const { from, to, block } of pipelineStep.transfers) {
      if (![from, to].every((rank) => Number.isInteger(rank) && rank >= 0 && rank < memberCount)) {
        violations.push(`step ${step}: rank out of range in ${from} -> ${to}`);
        continue;
      }
      if (!Number.isInteger(block) || block < 0 || block >= blockCount) {
        violations.push(`step ${step}: block ${block} out of range`);
        continue;
      }
      if (from === to) violations.push(`step ${step}: rank ${from} sends to itself`);
      if (senders.has(from)) violations.push(`step ${step}: rank ${from} sends twice`);
      if (receivers.has(to)) violations.push(`step ${step}: rank ${to} receives twice`);
      senders.add(from);
      receivers.add(to);
      if (!holds[from]![block]) violations.push(`step ${step}: rank ${from} sends block ${block} it does not hold`);
    }
    for (const { to, block } of pipelineStep.transfers) {
      if (holds[to] === undefined || block < 0 || block >= blockCount) continue;
      receiptCounts[to]![block]!++;
      holds[to]![block] = true;
    }
  });
  for (let block = 0; block < blockCount; block++) {
    if (receiptCounts[0]![block] !== 0) violations.push(`the sender receives block ${block}`);
    for (let rank = 1; rank < memberCount; rank++) {
      const receiptCount = receiptCounts[rank]![block]!;
      if (receiptCount !== 1) violations.push(`rank ${rank} receives block ${block} ${receiptCount} times`);
    }
  }
  return violations;
}

test('the checker itself rejects broken schedules', (t) => {
  const schedule = binomialPipelineSchedule(4, 3);
  const withoutLastTransfer = schedule.map((pipelineStep, step) => ({
    transfers: step === schedule.length - 1 ? pipelineStep.transfers.slice(1) : pipelineStep.transfers,
  }));
  t.notDeepEqual(violationsOf(4, 3, withoutLastTransfer), []);
  const relayTooEarly: PipelineStep[] = [{ transfers: [{ from: 1, to: 2, block: 0 }] }, ...schedule];
  t.notDeepEqual(violationsOf(4, 3, relayTooEarly), []);
  const twoSendsAtOnce: PipelineStep[] = [{ transfers: [{ from: 0, to: 1, block: 0 }, { from: 0, to: 2, block: 1 }] }];
  t.true(violationsOf(3, 2, twoSendsAtOnce).some((violation) => violation.includes('sends twice')));
});

test('one member: no steps', (t) => {
  t.deepEqual(binomialPipelineSchedule(1, 1), []);
  t.deepEqual(binomialPipelineSchedule(1, 7), []);
});

test('two members: the sender streams the blocks in order', (t) => {
  t.deepEqual(binomialPipelineSchedule(2, 3), [
    { transfers: [{ from: 0, to: 1, block: 0 }] },
    { transfers: [{ from: 0, to: 1, block: 1 }] },
    { transfers: [{ from: 0, to: 1, block: 2 }] },
  ]);
});

test('one block to four members is a binomial tree', (t) => {
  t.deepEqual(binomialPipelineSchedule(4, 1), [
    { transfers: [{ from: 0, to: 1, block: 0 }] },
    { transfers: [{ from: 0, to: 2, block: 0 }, { from: 1, to: 3, block: 0 }] },
  ]);
});

test('three members: the extra rank twins vertex 1 and catches up in one extra step', (t) => {
  const schedule = binomialPipelineSchedule(3, 2);
  t.is(schedule.length, 3);
  t.deepEqual(violationsOf(3, 2, schedule), []);
});

test('step counts for a table of sizes', (t) => {
  const cases: [memberCount: number, blockCount: number, stepCount: number][] = [
    [2, 1, 1], [3, 1, 2], [4, 1, 2], [5, 1, 3], [8, 1, 3], [9, 1, 4],
    [4, 10, 11], [8, 10, 12], [16, 10, 13], [5, 10, 12], [6, 10, 12], [7, 10, 12],
    [17, 4, 8], [32, 40, 44], [33, 40, 45],
  ];
  for (const [memberCount, blockCount, stepCount] of cases) {
    const schedule = binomialPipelineSchedule(memberCount, blockCount);
    t.is(schedule.length, stepCount, `${memberCount} members, ${blockCount} blocks`);
    t.deepEqual(violationsOf(memberCount, blockCount, schedule), [], `${memberCount} members, ${blockCount} blocks`);
  }
});

test('every size up to 33 members and 40 blocks is valid and takes exactly the promised steps', (t) => {
  for (let memberCount = 1; memberCount <= 33; memberCount++) {
    for (let blockCount = 1; blockCount <= 40; blockCount++) {
      const schedule = binomialPipelineSchedule(memberCount, blockCount);
      const violations = violationsOf(memberCount, blockCount, schedule);
      if (violations.length > 0) t.fail(`${memberCount} members, ${blockCount} blocks: ${violations.slice(0, 3).join('; ')}`);
      if (schedule.length !== promisedStepCount(memberCount, blockCount)) {
        t.fail(`${memberCount} members, ${blockCount} blocks: ${schedule.length} steps`);
      }
    }
  }
  t.pass();
});

test('property: valid and within blockCount + ceil(log2 n) - 1 steps', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 33 }), fc.integer({ min: 1, max: 40 }), (memberCount, blockCount) => {
      const schedule = binomialPipelineSchedule(memberCount, blockCount);
      return violationsOf(memberCount, blockCount, schedule).length === 0
        && schedule.length <= promisedStepCount(memberCount, blockCount);
    }),
    { numRuns: 300 },
  );
  t.pass();
});

test('property: larger groups with few blocks stay valid and within the bound', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 34, max: 200 }), fc.integer({ min: 1, max: 6 }), (memberCount, blockCount) => {
      const schedule = binomialPipelineSchedule(memberCount, blockCount);
      return violationsOf(memberCount, blockCount, schedule).length === 0
        && schedule.length <= promisedStepCount(memberCount, blockCount);
    }),
    { numRuns: 60 },
  );
  t.pass();
});

test('property: deterministic', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 33 }), fc.integer({ min: 1, max: 40 }), (memberCount, blockCount) => {
      t.deepEqual(binomialPipelineSchedule(memberCount, blockCount), binomialPipelineSchedule(memberCount, blockCount));
    }),
    { numRuns: 50 },
  );
});

test('property: scheduleFor gives each rank exactly its part of the schedule', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 33 }), fc.integer({ min: 1, max: 40 }), (memberCount, blockCount) => {
      const schedule = binomialPipelineSchedule(memberCount, blockCount);
      const rebuilt: PipelineStep[] = schedule.map(() => ({ transfers: [] }));
      for (let rank = 0; rank < memberCount; rank++) {
        let previousStep = -1;
        for (const rankStep of scheduleFor(rank, schedule)) {
          t.true(rankStep.step > previousStep, 'steps in increasing order');
          t.true(rankStep.sendTo !== undefined || rankStep.receiveFrom !== undefined, 'only steps the rank takes part in');
          previousStep = rankStep.step;
          if (rankStep.sendTo) rebuilt[rankStep.step]!.transfers.push({ from: rank, ...rankStep.sendTo });
          if (rankStep.receiveFrom) {
            const { from, block } = rankStep.receiveFrom;
            t.truthy(schedule[rankStep.step]!.transfers.find((transfer) =>
              transfer.from === from && transfer.to === rank && transfer.block === block));
          }
        }
      }
      const sortTransfers = (steps: PipelineStep[]): PipelineStep[] =>
        steps.map((pipelineStep) => ({ transfers: [...pipelineStep.transfers].sort((a, b) => a.from - b.from) }));
      t.deepEqual(sortTransfers(rebuilt), sortTransfers(schedule));
    }),
    { numRuns: 40 },
  );
});

test('scheduleFor: the sender of a two-member schedule', (t) => {
  const schedule = binomialPipelineSchedule(2, 2);
  t.deepEqual(scheduleFor(0, schedule), [
    { step: 0, sendTo: { to: 1, block: 0 } },
    { step: 1, sendTo: { to: 1, block: 1 } },
  ]);
  t.deepEqual(scheduleFor(1, schedule), [
    { step: 0, receiveFrom: { from: 0, block: 0 } },
    { step: 1, receiveFrom: { from: 0, block: 1 } },
  ]);
  t.deepEqual(scheduleFor(5, schedule), []);
});

test('blocksFor rounds up and never returns 0', (t) => {
  const cases: [messageBytes: number, blockBytes: number, blockCount: number][] = [
    [0, 1024, 1], [1, 1024, 1], [1024, 1024, 1], [1025, 1024, 2], [4096, 1024, 4], [10_000_000, 1 << 20, 10],
  ];
  for (const [messageBytes, blockBytes, blockCount] of cases) {
    t.is(blocksFor(messageBytes, blockBytes), blockCount, `${messageBytes} bytes in ${blockBytes}-byte blocks`);
  }
});

test('bad arguments throw RangeError', (t) => {
  t.throws(() => blocksFor(10, 0), { instanceOf: RangeError });
  t.throws(() => blocksFor(-1, 10), { instanceOf: RangeError });
  t.throws(() => binomialPipelineSchedule(0, 1), { instanceOf: RangeError });
  t.throws(() => binomialPipelineSchedule(2, 0), { instanceOf: RangeError });
  t.throws(() => binomialPipelineSchedule(2.5, 1), { instanceOf: RangeError });
});
