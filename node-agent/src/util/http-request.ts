// One HTTP(S) request with what `fetch` cannot take in Node 20 without a dependency: a CA to verify the
// server with (the group's CA for the agents' client API), the name to verify it by (a member's DNS name
// when connecting by IP or through a port-forward), or no verification (the kubelet's probes do that).
// Used by the typed client, the operator's /status polls and the tests' mock kubelet.

import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';

export interface HttpRequest {
  url: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** PEM of the certificate authorities trusted for https (default: Node's public roots). */
  ca?: string | Buffer;
  /** The name the server's certificate must carry (default: the URL's host). */
  servername?: string;
  /** false: accept any server certificate (a probe, never a client). Default true. */
  verify?: boolean;
  /** Who the server must be, once its chain is verified (default: its certificate carries `servername`, or the URL's host). */
  checkServerIdentity?: (host: string, cert: tls.PeerCertificate) => Error | undefined;
  /** The whole request, connect to the end of the body (default 30 s). */
  timeoutMs?: number;
  /** Bound on the answer's body (default 64 MiB): a larger one fails the request. */
  bodyBytesMax?: number;
  agent?: http.Agent | https.Agent;
}

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export class HttpRequestError extends Error {
  override name = 'HttpRequestError';
  constructor(message: string, readonly code: string | undefined) {
    super(message);
  }
}

const BODY_BYTES_MAX_DEFAULT = 64 << 20;

export function httpRequest(request: HttpRequest): Promise<HttpAnswer> {
  const url = new URL(request.url);
  const secure = url.protocol === 'https:';
  if (!secure && url.protocol !== 'http:') return Promise.reject(new HttpRequestError(`${request.url}: only http and https URLs`, undefined));
  const timeoutMs = request.timeoutMs ?? 30_000;
  const bodyBytesMax = request.bodyBytesMax ?? BODY_BYTES_MAX_DEFAULT;
  const headers: Record<string, string | number> = { ...request.headers };
  if (request.body !== undefined) headers['content-length'] = Buffer.byteLength(request.body);
  const options: https.RequestOptions = {
    method: request.method ?? 'GET',
    headers,
    ...(request.agent !== undefined ? { agent: request.agent } : {}),
  };
  if (secure) {
    if (request.ca !== undefined) options.ca = request.ca;
    if (request.servername !== undefined) options.servername = request.servername;
    if (request.verify === false) options.rejectUnauthorized = false;
    else if (request.checkServerIdentity !== undefined) options.checkServerIdentity = request.checkServerIdentity;
    else if (request.servername !== undefined) {
      // Verify against the name asked for, not the host connected to (an IP, 127.0.0.1 of a port-forward).
      const servername = request.servername;
      options.checkServerIdentity = (_host, cert) => tls.checkServerIdentity(servername, cert);
    }
  }
  return new Promise<HttpAnswer>((resolve, reject) => {
    let settled = false;
    const fail = (e: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const code = (e as { code?: unknown } | null)?.code;
      reject(e instanceof HttpRequestError ? e : new HttpRequestError(e instanceof Error ? e.message : String(e), typeof code === 'string' ? code : undefined));
      req.destroy();
    };
    const req = (secure ? https : http).request(url, options, (res) => {
      const chunks: Buffer[] = [];
      let bytes = 0;
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.byteLength;
        if (bytes > bodyBytesMax) return fail(new HttpRequestError(`${request.url}: answer over ${bodyBytesMax} bytes`, 'EBODYTOOLARGE'));
        chunks.push(chunk);
      });
      res.on('end', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
      });
      res.on('error', fail);
    });
    const timer = setTimeout(() => fail(new HttpRequestError(`${request.url}: no answer within ${timeoutMs} ms`, 'ETIMEDOUT')), timeoutMs);
    req.on('error', fail);
    req.end(request.body);
  });
}
