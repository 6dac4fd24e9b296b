// Dockerfile.agent, Dockerfile.operator and .dockerignore, checked without a Docker engine: the files are
// parsed (continuations, comments, stages, exec-form JSON, ENV/LABEL pairs) and their properties asserted:
// Node 24 bases pinned by tag, multi-stage with `npm ci` (production dependencies only) in the build stage,
// a numeric non-root USER equal to the uid the operator's pods run as, read-only-root friendly environment,
// exposed ports equal to what the operator and the chart use, OCI labels, the agent's rdma-core runtime
// libraries, exec-form entry points whose files exist, and a .dockerignore that keeps node_modules, .git,
// local state and benchmark results out without excluding anything the images copy.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import YAML from 'yaml';
import { DEFAULT_OPTIONS } from '../../operator/src/reconcile.ts';
import { ROOT, all, dockerignore, execForm, finalStage, ignored, last, pairs, parseDockerfile, words } from '../../scripts/images/dockerfile.ts';
import { ImageBuildError, planImage } from '../../scripts/images/build.ts';

// ---------------------------------------------------------------------------------------------------

const IMAGES = {
  agent: {
    file: 'Dockerfile.agent',
    entry: 'node-agent/src/agent/main.ts',
    ports: [DEFAULT_OPTIONS.peerPort, DEFAULT_OPTIONS.httpPort],
  },
  operator: {
    file: 'Dockerfile.operator',
    entry: 'operator/src/main.ts',
    ports: (() => {
      const values = YAML.parse(fs.readFileSync(path.join(ROOT, 'charts/derecho-operator/values.yaml'), 'utf8')) as { metrics: { port: number }; health: { port: number } };
      return [values.metrics.port, values.health.port];
    })(),
  },
} as const;

for (const [image, spec] of Object.entries(IMAGES)) {
  const d = parseDockerfile(spec.file);
  const final = finalStage(d);

  test(`${spec.file}: multi-stage, every stage on a Node 24 Debian slim image pinned by tag`, (t) => {
    t.true(d.stages.length >= 2, 'a build stage and a final stage');
    t.is(d.directives.syntax, 'docker/dockerfile:1', 'BuildKit syntax (RUN --mount for the npm cache)');
    for (const stage of d.stages) {
      t.regex(stage.image, /^node:24(?:\.\d+){0,2}-(?:bookworm|trixie)-slim(?:@sha256:[0-9a-f]{64})?$/, `stage ${stage.name ?? stage.index}: ${stage.image}`);
    }
    t.truthy(final.name, 'the final stage is named (docker build --target)');
    const names = d.stages.map((s) => s.name).filter(Boolean);
    t.is(new Set(names).size, names.length, 'stage names are unique');
  });

  test(`${spec.file}: npm ci of production dependencies in the build stage, none in the final stage`, (t) => {
    const copiesFrom = all(final, 'COPY').filter((c) => c.flags.from !== undefined);
    t.true(copiesFrom.length > 0, 'the final stage copies from a build stage');
    const modules = copiesFrom.find((c) => /(^|\s)\/app\/node_modules(\s|$)/.test(c.args));
    t.truthy(modules, 'node_modules comes from a build stage');
    const build = d.stages.find((s) => s.name === modules!.flags.from);
    t.truthy(build, `stage ${modules!.flags.from} exists`);
    const installs = all(build!, 'RUN').map((r) => r.args).filter((a) => /\bnpm\s+(ci|install|i)\b/.test(a));
    t.true(installs.length > 0 && installs.every((a) => /\bnpm\s+ci\b/.test(a)), `the build stage installs with npm ci from the lockfile: ${installs.join(' | ')}`);
    const pruned = all(build!, 'RUN').some((r) => /\bnpm\s+prune\b.*--omit=dev/.test(r.args));
    t.true(installs.every((a) => /--omit=dev/.test(a)) || pruned, 'dev dependencies are left out (npm ci --omit=dev, or npm prune --omit=dev)');
    t.true(all(build!, 'COPY').some((c) => /\bpackage-lock\.json\b/.test(c.args)), 'the lockfile is copied before npm ci');
    for (const run of all(final, 'RUN')) {
      t.notRegex(run.args, /\bnpm\s+(ci|install|i|add)\b|\byarn\b|\bpnpm\b/, `no package install in the final stage (line ${run.line})`);
    }
    // The image runs TypeScript through tsx: it must survive --omit=dev.
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
    t.truthy(pkg.dependencies.tsx, 'tsx is a runtime dependency');
    t.falsy(pkg.devDependencies.tsx);
  });

  test(`${spec.file}: numeric non-root USER ${DEFAULT_OPTIONS.runAsUser}, read-only root filesystem friendly`, (t) => {
    const user = last(final, 'USER');
    t.truthy(user, 'a USER in the final stage');
    t.regex(user!.args, /^[1-9][0-9]*(?::[1-9][0-9]*)?$/, 'numeric uid[:gid] (runAsNonRoot can only verify numeric users)');
    const [uid, gid] = user!.args.split(':').map(Number);
    t.is(uid, DEFAULT_OPTIONS.runAsUser, 'the uid the operator runs member pods as (runAsUser, fsGroup)');
    if (gid !== undefined) t.is(gid, DEFAULT_OPTIONS.runAsUser);
    // Nothing after USER may need root.
    const after = final.instructions.slice(final.instructions.indexOf(user!) + 1);
    t.deepEqual(after.filter((i) => i.keyword === 'RUN').map((i) => i.line), [], 'no RUN after USER');
    const env = pairs(final.instructions, 'ENV');
    t.is(env.HOME, '/tmp', 'HOME on the one writable mount');
    t.is(env.TMPDIR, '/tmp');
    t.is(env.TSX_DISABLE_CACHE, '1', 'tsx writes no compile cache (it would crash on a read-only root)');
    t.is(env.NODE_ENV, 'production');
    // Code is owned by root: no --chown on the application's COPYs.
    for (const copy of all(final, 'COPY')) t.is(copy.flags.chown, undefined, `COPY at line ${copy.line} keeps root ownership`);
    t.is(last(final, 'WORKDIR')?.args, '/app');
  });

  test(`${spec.file}: exposes ${spec.ports.join(' and ')}`, (t) => {
    const exposed = all(final, 'EXPOSE').flatMap((e) => e.args.split(/\s+/)).map((p) => Number(p.replace(/\/tcp$/, '')));
    t.deepEqual([...exposed].sort((a, b) => a - b), [...spec.ports].sort((a, b) => a - b));
  });

  test(`${spec.file}: exec-form ENTRYPOINT node --import tsx ${spec.entry}, copied into the image`, (t) => {
    const entrypoint = execForm(last(final, 'ENTRYPOINT'));
    t.deepEqual(entrypoint, ['node', '--import', 'tsx', spec.entry], 'exec form (node is PID 1 and receives SIGTERM)');
    t.true(fs.existsSync(path.join(ROOT, spec.entry)), `${spec.entry} exists in the repository`);
    // The entry point's directory reaches the final stage: COPY --from=<stage> /app/<dir> ./<dir>.
    const copied = all(final, 'COPY').some((c) => {
      const parts = words(c.args);
      return parts.slice(0, -1).some((src) => spec.entry.startsWith(`${src.replace(/^\/app\//, '').replace(/\/$/, '')}/`));
    });
    t.true(copied, `${spec.entry} is copied into the final stage`);
    const cmd = last(final, 'CMD');
    if (cmd) t.truthy(execForm(cmd), 'CMD in exec form');
  });

  test(`${spec.file}: OCI labels`, (t) => {
    const labels = pairs(final.instructions, 'LABEL');
    for (const key of ['title', 'description', 'version', 'revision', 'source', 'licenses']) {
      t.truthy(labels[`org.opencontainers.image.${key}`], `org.opencontainers.image.${key}`);
    }
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { license: string; version: string };
    t.is(labels['org.opencontainers.image.licenses'], pkg.license);
    t.is(labels['org.opencontainers.image.title'], image === 'agent' ? 'derecho-node-agent' : 'derecho-operator');
    const versionArg = all(final, 'ARG').find((a) => a.args.startsWith('VERSION='));
    t.is(versionArg?.args, `VERSION=${pkg.version}`, 'the default version is package.json\'s');
  });

  test(`${spec.file}: every file copied from the build context survives .dockerignore`, (t) => {
    const sources = d.stages.flatMap((s) => all(s, 'COPY').filter((c) => c.flags.from === undefined)).flatMap((c) => words(c.args).slice(0, -1));
    t.true(sources.length > 0);
    for (const source of sources) {
      const rel = source.replace(/^\.\//, '').replace(/\/$/, '');
      t.true(fs.existsSync(path.join(ROOT, rel)), `${rel} exists`);
      t.is(ignored(rel), null, `${rel} is not excluded by .dockerignore`);
    }
  });
}

test('Dockerfile.agent: rdma-core runtime libraries (libibverbs1, librdmacm1, providers) in the final stage', (t) => {
  const final = finalStage(parseDockerfile('Dockerfile.agent'));
  const apt = all(final, 'RUN').map((r) => r.args).find((a) => /apt-get\s+install/.test(a));
  t.truthy(apt, 'an apt-get install in the final stage');
  for (const pkg of ['libibverbs1', 'librdmacm1', 'ibverbs-providers']) t.regex(apt!, new RegExp(`\\b${pkg}\\b`), pkg);
  t.regex(apt!, /--no-install-recommends/);
  t.regex(apt!, /apt-get update/, 'the index is fetched in the same layer');
  t.regex(apt!, /rm -rf \/var\/lib\/apt\/lists/, 'and removed in the same layer');
  t.notRegex(apt!, /-dev\b/, 'no development packages in the final stage');
});

test('Dockerfile.agent: the RDMA addon is built in the build stage (strictly) and copied into the final stage', (t) => {
  const d = parseDockerfile('Dockerfile.agent');
  const final = finalStage(d);
  const copy = all(final, 'COPY').find((c) => /native\/build\/Release\/derecho_rdma\.node/.test(c.args));
  t.truthy(copy, 'the final stage copies the addon');
  const build = d.stages.find((s) => s.name === copy!.flags.from)!;
  t.truthy(build, `stage ${copy!.flags.from} exists`);
  const runs = all(build, 'RUN').map((r) => r.args);
  const apt = runs.find((a) => /apt-get\s+install/.test(a));
  t.truthy(apt, 'the build stage installs the build dependencies');
  for (const pkg of ['libibverbs-dev', 'librdmacm-dev', 'python3', 'make', 'g++']) t.regex(apt!, new RegExp(`(^|\\s)${pkg.replace('+', '\\+')}(\\s|$)`), pkg);
  t.regex(apt!, /rm -rf \/var\/lib\/apt\/lists/);
  const npmCi = runs.findIndex((a) => /\bnpm\s+ci\b/.test(a));
  t.true(runs.findIndex((a) => /apt-get\s+install/.test(a)) < npmCi, 'headers before the install');
  t.regex(runs[npmCi]!, /node native\/build\.mjs(?! --optional)/, 'built without --optional: a failed build fails the image');
  t.regex(runs[npmCi]!, /test -f native\/build\/Release\/derecho_rdma\.node/);
  // What the build needs is copied before it, and exists.
  const copied = all(build, 'COPY').flatMap((c) => words(c.args).slice(0, -1));
  for (const f of ['native/binding.gyp', 'native/build.mjs', 'native/src/']) {
    t.true(copied.includes(f), `${f} is copied into the build stage`);
    t.true(fs.existsSync(path.join(ROOT, f)), `${f} exists`);
  }
  // The runtime loads it from where node-agent/src/transport/rdma/native-verbs.ts looks.
  const loader = fs.readFileSync(path.join(ROOT, 'node-agent/src/transport/rdma/native-verbs.ts'), 'utf8');
  t.regex(loader, /'\.\.\/\.\.\/\.\.\/\.\.\/native\/build\/Release\/derecho_rdma\.node'/);
  t.is(words(copy!.args).at(-1), './native/build/Release/derecho_rdma.node');
});

test('package.json\'s install script builds the addon optionally, and passes where native/ is not copied (Dockerfile.operator)', (t) => {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  const script = pkg.scripts['install']!;
  t.regex(script, /native\/build\.mjs/);
  t.regex(script, /--optional/);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'install-script-'));
  try {
    const r = spawnSync('sh', ['-c', script], { cwd: dir, encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
    t.regex(r.stdout, /native: native\/build\.mjs is not in this tree \(an image without the RDMA addon\): not built/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('Dockerfile.agent: the data directory exists and belongs to the agent', (t) => {
  const final = finalStage(parseDockerfile('Dockerfile.agent'));
  const env = pairs(final.instructions, 'ENV');
  t.is(env.DERECHO_DATA_DIR, DEFAULT_OPTIONS.dataDir, 'where the operator mounts the member volume');
  const runs = all(final, 'RUN').map((r) => r.args).join('\n');
  t.regex(runs, new RegExp(`chown ${DEFAULT_OPTIONS.runAsUser}:${DEFAULT_OPTIONS.runAsUser} ${DEFAULT_OPTIONS.dataDir.replace(/\//g, '\\/')}`));
});

test('.dockerignore keeps dependencies, VCS data, local state, results and credentials out', (t) => {
  const rules = dockerignore();
  for (const rel of [
    'node_modules', 'node_modules/tsx/package.json', 'operator/node_modules/x', '.git', '.git/HEAD', 'bench/results', 'bench/results/run.json',
    '.derecho', '.derecho/kv-demo/hmac.key', 'native/build/Release/addon.node', '.sim-failures/seed-1.json', 'profile.cpuprofile',
    'node-agent/src/agent/agent.test.ts', 'operator/src/reconcile.test.ts', 'test/cluster/tools.ts', '.env', 'certs/node-1.key',
  ]) {
    t.not(ignored(rel, rules), null, `${rel} is excluded`);
  }
  for (const rel of ['package.json', 'package-lock.json', 'tsconfig.json', 'bin/derecho.js', 'node-agent/src/agent/main.ts', 'node-agent/src/core/replica.ts', 'operator/src/reconcile.ts']) {
    t.is(ignored(rel, rules), null, `${rel} is in the build context`);
  }
});

test('the Dockerfile parser handles continuations, comments inside them, flags and stages', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dockerfile-test-'));
  try {
    const file = path.join(dir, 'Dockerfile');
    fs.writeFileSync(path.join(dir, 'Dockerfile'), [
      '# syntax=docker/dockerfile:1',
      'ARG BASE=x',
      'FROM node:24-bookworm-slim AS build',
      'RUN --mount=type=cache,target=/root/.npm \\',
      '    # a comment inside',
      '    npm ci --omit=dev',
      'FROM node:24-bookworm-slim',
      'LABEL a="b c" d=e',
      'ENV X=1 \\',
      '    Y=2',
      'ENTRYPOINT ["node", "x.ts"]',
      '',
    ].join('\n'));
    const d = parseDockerfile(file);
    t.is(d.directives.syntax, 'docker/dockerfile:1');
    t.is(d.stages.length, 2);
    t.is(d.stages[0]!.name, 'build');
    t.deepEqual(d.stages[0]!.instructions[0]!.flags, { mount: 'type=cache,target=/root/.npm' });
    t.is(d.stages[0]!.instructions[0]!.args, 'npm ci --omit=dev');
    t.deepEqual(pairs(d.stages[1]!.instructions, 'LABEL'), { a: 'b c', d: 'e' });
    t.deepEqual(pairs(d.stages[1]!.instructions, 'ENV'), { X: '1', Y: '2' });
    t.deepEqual(execForm(last(d.stages[1]!, 'ENTRYPOINT')), ['node', 'x.ts']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------------------
// The local image build (scripts/images/build.ts) follows the Dockerfiles: npm run test:images builds and
// runs the images; here, without building, that it reads every instruction and refuses what it cannot do.

test('the local image build reads every instruction of both Dockerfiles into the same image config', (t) => {
  for (const [name, spec] of Object.entries(IMAGES) as [keyof typeof IMAGES, (typeof IMAGES)[keyof typeof IMAGES]][]) {
    const plan = planImage(name, '9.9.9');
    const final = finalStage(parseDockerfile(spec.file));
    t.is(plan.config.User, last(final, 'USER')!.args, name);
    t.deepEqual(plan.config.Entrypoint, execForm(last(final, 'ENTRYPOINT')), name);
    t.deepEqual(plan.config.ExposedPorts, Object.fromEntries(spec.ports.map((port) => [`${port}/tcp`, {}])), name);
    for (const [key, value] of Object.entries(pairs(final.instructions, 'ENV'))) t.true(plan.config.Env.includes(`${key}=${value}`), `${name}: ENV ${key}`);
    t.is(plan.config.Labels['org.opencontainers.image.version'], '9.9.9', `${name}: ARG VERSION reaches the label`);
    t.is(plan.config.WorkingDir, '/app');
    t.true(plan.buildSteps.some((s) => s.kind === 'npm-ci'), name);
    t.true(plan.users.some((u) => `${u.uid}:${u.gid}` === plan.config.User), `${name}: the USER exists in /etc/passwd`);
  }
  const agent = planImage('agent');
  t.deepEqual(agent.packages, ['ibverbs-providers', 'libibverbs1', 'librdmacm1']);
  t.deepEqual(agent.directories.find((d) => d.path === '/var/lib/derecho'), { path: '/var/lib/derecho', uid: 65532, gid: 65532 });
  t.true(agent.copies.some(([, to]) => to === '/app/native/build/Release/derecho_rdma.node'));
  t.deepEqual(planImage('operator').packages, []);
});

test('the local image build refuses a Dockerfile instruction it cannot carry out, naming it', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'derecho-dockerfile-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const text = fs.readFileSync(path.join(ROOT, 'Dockerfile.operator'), 'utf8');
  const drifted = path.join(dir, 'Dockerfile');
  fs.writeFileSync(drifted, text.replace(/^USER /m, 'RUN curl -fsSL https://example.com/tool | sh\nUSER '));
  const error = t.throws(() => planImage('operator', '1.0.0', drifted), { instanceOf: ImageBuildError });
  t.regex(error?.message ?? '', /RUN curl -fsSL https:\/\/example\.com\/tool \| sh — scripts\/images\/build\.ts does not know how to build it/);
  fs.writeFileSync(drifted, text.replace(/^FROM node:24-bookworm-slim AS operator$/m, 'FROM gcr.io/distroless/nodejs24 AS operator'));
  t.throws(() => planImage('operator', '1.0.0', drifted), { message: /this build makes node:<major>-bookworm-slim only/ });
});
