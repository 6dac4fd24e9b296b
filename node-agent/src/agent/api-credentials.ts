// What protects the agent's HTTP API (agent config `api`, docs/adr/0015-client-api-security.md): TLS with
// the member's certificate and the bearer tokens clients must show under /v1/. The files are re-read on the
// TLS reload period, so a renewed certificate or a rotated token applies without a restart; a file caught
// half-written or unreadable leaves what is in force (never an exit), and says why in /status.

import { createHash, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import type http from 'node:http';
import tls from 'node:tls';
import { ConfigError } from '../config/errors.ts';
import type { AgentApi } from '../config/schema.ts';

/** Tokens shorter than this are refused (a token is a password: 32 random bytes is what the operator makes). */
export const TOKEN_CHARS_MIN = 16;
/** At most this many tokens in the file (a rotation needs two). */
export const TOKENS_MAX = 16;

/** The lines of a token file that hold a token: trimmed, blank lines and lines starting with # skipped. */
export function tokenLines(text: string): string[] {
  return text.split(/\r?\n/).map((line) => line.trim()).filter((line) => line !== '' && !line.startsWith('#'));
}

/** The tokens of a token file (tokenLines), checked: at least one, at most TOKENS_MAX, none short or with spaces. */
export function parseTokens(text: string, file: string): string[] {
  const tokens = tokenLines(text);
  if (tokens.length === 0) throw new Error(`${file} holds no token (one per line)`);
  if (tokens.length > TOKENS_MAX) throw new Error(`${file} holds ${tokens.length} tokens; at most ${TOKENS_MAX}`);
  const short = tokens.findIndex((t) => t.length < TOKEN_CHARS_MIN);
  if (short >= 0) throw new Error(`${file}: token ${short + 1} has ${tokens[short]!.length} characters; at least ${TOKEN_CHARS_MIN}`);
  if (tokens.some((t) => /\s/.test(t))) throw new Error(`${file}: a token holds white space`);
  return tokens;
}

const digest = (text: string): Buffer => createHash('sha256').update(text, 'utf8').digest();

/** The routes anyone who reaches the port may read: probes, metrics, the operator's /status polls. */
export function openRoute(method: string, pathname: string): boolean {
  return method === 'GET' && (pathname === '/healthz' || pathname === '/readyz' || pathname === '/metrics' || pathname === '/status');
}

export interface ApiCredentialsStatus {
  tls: boolean;
  /** Whether /v1/ asks for a bearer token, and how many are accepted now. */
  tokenRequired: boolean;
  tokens: number;
  reloads: number;
  lastReloadError: string | null;
  /** Requests refused for a missing or wrong token since the start. */
  refused: number;
}

export class ApiCredentials {
  private tlsFiles: { cert: Buffer; key: Buffer } | null = null;
  private tokenDigests: Buffer[] | null = null;
  private tokenText: string | null = null;
  private reloads = 0;
  private lastReloadError: string | null = null;
  private refusedCount = 0;
  private server: http.Server | null = null;

  /** Reads the files the config names; a missing or bad one is a ConfigError (the agent does not start). */
  constructor(private readonly files: AgentApi) {
    try {
      if (files.tlsCertFile !== undefined && files.tlsKeyFile !== undefined) {
        this.tlsFiles = { cert: fs.readFileSync(files.tlsCertFile), key: fs.readFileSync(files.tlsKeyFile) };
        tls.createSecureContext(this.tlsFiles);
      }
      if (files.tokenFile !== undefined) {
        this.tokenText = fs.readFileSync(files.tokenFile, 'utf8');
        this.tokenDigests = parseTokens(this.tokenText, files.tokenFile).map(digest);
      }
    } catch (e) {
      throw new ConfigError([`api: ${e instanceof Error ? e.message : String(e)}`]);
    }
  }

  /** The key and certificate the server starts with, or null for plain HTTP. */
  tlsOptions(): { cert: Buffer; key: Buffer } | null {
    return this.tlsFiles === null ? null : { ...this.tlsFiles };
  }

  /** The server whose secure context a reload replaces. */
  attach(server: http.Server): void {
    this.server = server;
  }

  /**
   * null when the request may go on; else why not (the answer is 401). Open routes never ask; every other
   * route asks for `Authorization: Bearer <token>` with one of the file's tokens (compared in constant time).
   */
  refusal(method: string, pathname: string, authorization: string | undefined): string | null {
    if (this.tokenDigests === null || openRoute(method, pathname)) return null;
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (match === null) {
      this.refusedCount++;
      return authorization === undefined ? 'this API needs a bearer token (Authorization: Bearer <token>; the token is in the group\'s client Secret)' : 'the Authorization header is not "Bearer <token>"';
    }
    const presented = digest(match[1]!);
    let ok = false;
    for (const d of this.tokenDigests) ok = timingSafeEqual(presented, d) || ok;
    if (ok) return null;
    this.refusedCount++;
    return 'the bearer token is not one this group accepts';
  }

  /** Re-reads the files; what changed is put in use, a bad update is refused and reported. */
  reload(log: (message: string, fields: Record<string, unknown>) => void): void {
    const problems: string[] = [];
    const changed: string[] = [];
    if (this.tlsFiles !== null && this.files.tlsCertFile !== undefined && this.files.tlsKeyFile !== undefined) {
      try {
        const next = { cert: fs.readFileSync(this.files.tlsCertFile), key: fs.readFileSync(this.files.tlsKeyFile) };
        if (!next.cert.equals(this.tlsFiles.cert) || !next.key.equals(this.tlsFiles.key)) {
          const server = this.server as (http.Server & { setSecureContext?(options: tls.SecureContextOptions): void }) | null;
          // setSecureContext checks the pair (a key of another certificate throws) before it replaces anything.
          if (server?.setSecureContext) server.setSecureContext(next);
          else tls.createSecureContext(next);
          this.tlsFiles = next;
          changed.push('certificate');
        }
      } catch (e) {
        problems.push(`${this.files.tlsCertFile}, ${this.files.tlsKeyFile}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    if (this.tokenDigests !== null && this.files.tokenFile !== undefined) {
      try {
        const text = fs.readFileSync(this.files.tokenFile, 'utf8');
        if (text !== this.tokenText) {
          this.tokenDigests = parseTokens(text, this.files.tokenFile).map(digest);
          this.tokenText = text;
          changed.push('tokens');
        }
      } catch (e) {
        problems.push(e instanceof Error ? e.message : String(e));
      }
    }
    const error = problems.length === 0 ? null : problems.join('; ');
    if (error !== null && error !== this.lastReloadError) log('client API credentials reload failed; the current ones stay in use', { error });
    this.lastReloadError = error;
    if (changed.length > 0) {
      this.reloads++;
      log('client API credentials reloaded', { changed, tokens: this.tokenDigests?.length ?? 0 });
    }
  }

  status(): ApiCredentialsStatus {
    return {
      tls: this.tlsFiles !== null,
      tokenRequired: this.tokenDigests !== null,
      tokens: this.tokenDigests?.length ?? 0,
      reloads: this.reloads,
      lastReloadError: this.lastReloadError,
      refused: this.refusedCount,
    };
  }
}
