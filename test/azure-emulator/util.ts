// Small shared pieces of the Azure emulator: deterministic identifiers, error types in the
// shapes Azure writes, and HTTP helpers.
import { createHash } from "node:crypto";
import type { ServerResponse } from "node:http";

/**
 * Deterministic identifiers. Every value is derived from the seed, a kind, a key (e.g. the
 * lower-cased resource ID) and how many times that kind+key was asked for before, so the same
 * calls give the same IDs even when unrelated calls interleave differently.
 */
export class DetIds {
  private readonly uses = new Map<string, number>();
  constructor(private seed: string) {}

  private digest(kind: string, key: string): Buffer {
    const k = `${kind}\u0000${key.toLowerCase()}`;
    const n = this.uses.get(k) ?? 0;
    this.uses.set(k, n + 1);
    return createHash("sha256").update(`${this.seed}\u0000${k}\u0000${n}`).digest();
  }

  /** A version-4-shaped GUID. */
  guid(kind: string, key: string): string {
    const b = this.digest(kind, key);
    b[6] = (b[6]! & 0x0f) | 0x40;
    b[8] = (b[8]! & 0x3f) | 0x80;
    const h = b.subarray(0, 16).toString("hex");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
  }

  hex(kind: string, key: string, length = 32): string {
    return this.digest(kind, key).toString("hex").slice(0, length);
  }

  /** A number in [0, 1) (used for percentage faults). */
  fraction(kind: string, key: string): number {
    return this.digest(kind, key).readUInt32BE(0) / 2 ** 32;
  }

  /** Forgets how often each ID was asked for (and optionally changes the seed). */
  reset(seed?: string): void {
    if (seed !== undefined) this.seed = seed;
    this.uses.clear();
  }
}

/** An error answered in Resource Manager's shape: {"error":{"code","message"}}. */
export class ArmError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: { headers?: Record<string, string>; details?: unknown[]; target?: string } = {},
  ) {
    super(message);
  }

  body(): unknown {
    const error: Record<string, unknown> = { code: this.code, message: this.message };
    if (this.extra.target) error.target = this.extra.target;
    if (this.extra.details) error.details = this.extra.details;
    return { error };
  }
}

/** An error answered in Entra ID's OAuth shape, with its AADSTS code. */
export class EntraError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    readonly aadsts: number,
    readonly description: string,
  ) {
    super(`AADSTS${aadsts}: ${description}`);
  }
}

/** A body sent as plain text (the instance metadata service's format=text answers). */
export class TextBody {
  constructor(readonly text: string) {}
}

/** Sends `body` as JSON (or as text); returns the bytes of the body sent. */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): number {
  const raw = body instanceof TextBody;
  const text = body === undefined ? "" : raw ? body.text : JSON.stringify(body);
  const bytes = Buffer.byteLength(text);
  res.writeHead(status, {
    ...(body === undefined ? {} : { "content-type": raw ? "text/plain; charset=utf-8" : "application/json; charset=utf-8" }),
    "content-length": String(bytes),
    ...headers,
  });
  res.end(text);
  return bytes;
}

export const lc = (s: string): string => s.toLowerCase();

export const eqi = (a: string | undefined, b: string | undefined): boolean => a !== undefined && b !== undefined && a.toLowerCase() === b.toLowerCase();

const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const isGuid = (s: string): boolean => GUID_RE.test(s);

/** True when `scope` equals `ancestor` or lies below it (segment-wise, case-insensitive). */
export function scopeWithin(scope: string, ancestor: string): boolean {
  const s = trimSlash(scope).toLowerCase();
  const a = trimSlash(ancestor).toLowerCase();
  if (a === "") return true; // "/" = everything
  return s === a || s.startsWith(a + "/");
}

export function trimSlash(s: string): string {
  let out = s;
  while (out.endsWith("/")) out = out.slice(0, -1);
  return out;
}

export function isoNow(nowMs: number): string {
  return new Date(nowMs).toISOString();
}

/** Plain deep copy of JSON data. */
export function clone<T>(v: T): T {
  return v === undefined ? v : (JSON.parse(JSON.stringify(v)) as T);
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
