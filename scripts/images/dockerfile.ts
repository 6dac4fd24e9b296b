// A small Dockerfile parser and a .dockerignore matcher: test/unit/dockerfiles.test.ts checks the
// Dockerfiles' properties with them, and scripts/images/build.ts builds the images from what they say
// (no Docker engine here), so the two stay in step.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

// ---------------------------------------------------------------------------------------------------
// A small Dockerfile parser.

export interface Instruction {
  /** Upper-case keyword, e.g. RUN. */
  keyword: string;
  /** Everything after the keyword, continuations joined with a space. */
  args: string;
  /** Flags such as --from=build, --mount=... (leading --name[=value] words). */
  flags: Record<string, string>;
  /** 1-based line of the keyword. */
  line: number;
}

export interface Stage {
  image: string;
  name: string | null;
  index: number;
  instructions: Instruction[];
}

export interface Dockerfile {
  file: string;
  directives: Record<string, string>;
  stages: Stage[];
}

export function parseDockerfile(file: string): Dockerfile {
  const text = fs.readFileSync(path.resolve(ROOT, file), 'utf8');
  const lines = text.split('\n');
  const directives: Record<string, string> = {};
  const instructions: Instruction[] = [];
  let inDirectives = true;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    const trimmed = raw.trim();
    if (inDirectives) {
      const directive = /^#\s*([a-z]+)\s*=\s*(\S+)\s*$/i.exec(trimmed);
      if (directive) {
        directives[directive[1]!.toLowerCase()] = directive[2]!;
        continue;
      }
      inDirectives = false;
    }
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const line = i + 1;
    let joined = trimmed;
    // Continuation lines; comment lines inside a continued instruction are dropped (as Docker does).
    while (joined.endsWith('\\')) {
      joined = joined.slice(0, -1).trimEnd();
      i++;
      while (i < lines.length && lines[i]!.trim().startsWith('#')) i++;
      if (i >= lines.length) break;
      joined += ` ${lines[i]!.trim()}`;
    }
    const match = /^(\S+)\s*(.*)$/.exec(joined)!;
    let args = match[2]!;
    const flags: Record<string, string> = {};
    for (;;) {
      const flag = /^--([a-z-]+)(?:=(\S*))?\s+/.exec(args);
      if (!flag) break;
      flags[flag[1]!] = flag[2] ?? '';
      args = args.slice(flag[0].length);
    }
    instructions.push({ keyword: match[1]!.toUpperCase(), args, flags, line });
  }
  const stages: Stage[] = [];
  for (const instruction of instructions) {
    if (instruction.keyword === 'FROM') {
      const from = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(instruction.args);
      if (!from) throw new Error(`${file}:${instruction.line}: cannot parse FROM ${instruction.args}`);
      stages.push({ image: from[1]!, name: from[2] ?? null, index: stages.length, instructions: [] });
    } else if (stages.length === 0) {
      if (instruction.keyword !== 'ARG') throw new Error(`${file}:${instruction.line}: ${instruction.keyword} before the first FROM`);
    } else {
      stages.at(-1)!.instructions.push(instruction);
    }
  }
  return { file, directives, stages };
}

/** Splits shell-like words: whitespace-separated, with "double" and 'single' quotes. */
export function words(text: string): string[] {
  const out: string[] = [];
  const re = /(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([^\s"']+))+/g;
  for (const m of text.matchAll(re)) {
    out.push(m[0].replace(/"((?:[^"\\]|\\.)*)"|'([^']*)'/g, (_all, dq: string | undefined, sq: string | undefined) => (dq !== undefined ? dq.replace(/\\(.)/g, '$1') : sq ?? '')));
  }
  return out;
}

/** KEY=VALUE pairs of ENV or LABEL (the key=value form). */
export function pairs(instructions: Instruction[], keyword: 'ENV' | 'LABEL'): Record<string, string> {
  const out: Record<string, string> = {};
  for (const instruction of instructions.filter((i) => i.keyword === keyword)) {
    for (const word of words(instruction.args)) {
      const eq = word.indexOf('=');
      if (eq <= 0) throw new Error(`${keyword} at line ${instruction.line}: use the KEY=VALUE form (${word})`);
      out[word.slice(0, eq)] = word.slice(eq + 1);
    }
  }
  return out;
}

export function execForm(instruction: Instruction | undefined): string[] | null {
  if (!instruction) return null;
  try {
    const value: unknown = JSON.parse(instruction.args);
    return Array.isArray(value) && value.every((v) => typeof v === 'string') ? (value as string[]) : null;
  } catch {
    return null;
  }
}

export const finalStage = (d: Dockerfile): Stage => d.stages.at(-1)!;
export const all = (stage: Stage, keyword: string): Instruction[] => stage.instructions.filter((i) => i.keyword === keyword);
export const last = (stage: Stage, keyword: string): Instruction | undefined => all(stage, keyword).at(-1);

// ---------------------------------------------------------------------------------------------------
// A .dockerignore matcher (Docker's rules: patterns relative to the context root, `*` and `?` within a
// path element, `**` across elements, a match of a directory excludes what is under it, the last
// matching pattern wins, `!` re-includes).

export function dockerignore(): { pattern: RegExp; negate: boolean; source: string }[] {
  return fs.readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const negate = l.startsWith('!');
      const source = path.posix.normalize((negate ? l.slice(1) : l).trim().replace(/^\/+/, '')).replace(/\/+$/, '');
      let re = '';
      for (let i = 0; i < source.length; i++) {
        const c = source[i]!;
        if (c === '*' && source[i + 1] === '*') {
          // `**/` matches zero or more directories; a trailing `**` anything.
          if (source[i + 2] === '/') {
            re += '(?:.*/)?';
            i += 2;
          } else {
            re += '.*';
            i += 1;
          }
        } else if (c === '*') re += '[^/]*';
        else if (c === '?') re += '[^/]';
        else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
      }
      return { pattern: new RegExp(`^${re}$`), negate, source: l };
    });
}

export function ignored(rel: string, rules = dockerignore()): string | null {
  const parts = rel.split('/');
  let verdict: string | null = null;
  for (const rule of rules) {
    // A pattern matching the path or any of its parent directories applies.
    const hit = parts.some((_, index) => rule.pattern.test(parts.slice(0, index + 1).join('/')));
    if (hit) verdict = rule.negate ? null : rule.source;
  }
  return verdict;
}

