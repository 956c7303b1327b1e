import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger, createRedactor, isSecretKey, lazyChild, redactString, scrubSecrets } from "../../../src/engine/logger.js";

function collector(): { stream: Writable; lines: () => Record<string, unknown>[]; raw: () => string } {
  let buf = "";
  const stream = new Writable({
    write(chunk: Buffer | string, _enc, cb) {
      buf += chunk.toString();
      cb();
    },
  });
  return {
    stream,
    raw: () => buf,
    lines: () =>
      buf
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

const SECRETS = {
  password: "hunter2-pw-value",
  token: "tok-5f8e2d1c",
  accessKeyId: "AKIAEXAMPLEKEY000001",
  secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
  sessionToken: "FwoGZXIvYXdzEXAMPLESESSION",
  clientSecret: "azure-client-secret-value",
  authorization: "Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig",
  data: "c2VjcmV0LWRhdGEtYmxvYg==",
  platformToken: "platform-token-xyz-123",
};

describe("createLogger", () => {
  it("emits JSON lines with level label, time, name and message", () => {
    const c = collector();
    const log = createLogger({ name: "engine-test", destination: c.stream });
    log.info({ key: "ns/a" }, "hello");
    const [line] = c.lines();
    expect(line).toMatchObject({ level: "info", name: "engine-test", key: "ns/a", msg: "hello" });
    expect(typeof line?.time).toBe("string");
  });

  it("respects the level option", () => {
    const c = collector();
    const log = createLogger({ level: "warn", destination: c.stream });
    log.info("not shown");
    log.debug("not shown");
    log.warn("shown");
    expect(c.lines().map((l) => l.msg)).toEqual(["shown"]);
  });

  it("rejects an unknown level", () => {
    expect(() => createLogger({ level: "loud" })).toThrow(/invalid log level/);
  });

  it("never writes a secret value held under a secret-like key, at any depth", () => {
    const c = collector();
    const log = createLogger({ level: "trace", destination: c.stream });
    log.info(SECRETS, "top level");
    log.info({ a: SECRETS }, "one level");
    log.info({ a: { b: { c: { d: { e: SECRETS } } } } }, "five levels");
    log.info({ list: [{ creds: SECRETS }] }, "in an array");
    log.info({ secret: { apiVersion: "v1", kind: "Secret", data: { key: "dmFsdWU=" }, stringData: { key: "plain-value-9" } } }, "k8s secret");
    log.child({ bound: { token: SECRETS.token } }).info({ headers: { Authorization: SECRETS.authorization } }, "child");
    const raw = c.raw();
    for (const v of [...Object.values(SECRETS), "dmFsdWU=", "plain-value-9"]) {
      expect(raw).not.toContain(v);
    }
    expect(c.lines()).toHaveLength(6);
    expect(c.lines()[2]).toMatchObject({ a: { b: { c: { d: { e: { password: "[REDACTED]", data: "[REDACTED]" } } } } } });
  });

  it("keeps non-secret fields and secret references (names are not secrets)", () => {
    const c = collector();
    const log = createLogger({ destination: c.stream });
    log.info({ spec: { credentials: undefined, platformTokenSecretRef: { name: "seqera", key: "token" }, region: "eu-west-1" } }, "x");
    expect(c.lines()[0]).toMatchObject({ spec: { platformTokenSecretRef: { name: "seqera", key: "token" }, region: "eu-west-1" } });
  });

  it("scrubs enumerable fields of logged errors, also when passed as the first argument", () => {
    class ApiError extends Error {
      body = { message: "denied", token: SECRETS.token };
    }
    const c = collector();
    const log = createLogger({ destination: c.stream });
    log.error({ err: new ApiError("boom") }, "failed");
    log.error(new ApiError("boom2"));
    const raw = c.raw();
    expect(raw).not.toContain(SECRETS.token);
    const [a, b] = c.lines();
    expect(a).toMatchObject({ err: { message: "boom", type: "ApiError", body: { message: "denied", token: "[REDACTED]" } } });
    expect(b).toMatchObject({ err: { message: "boom2" }, msg: "boom2" });
  });

  it("does not modify the logged object", () => {
    const c = collector();
    const log = createLogger({ destination: c.stream });
    const obj = { nested: { password: "p-1234" } };
    log.info(obj, "x");
    expect(obj.nested.password).toBe("p-1234");
  });

  it("survives cyclic objects", () => {
    const c = collector();
    const log = createLogger({ destination: c.stream });
    const obj: Record<string, unknown> = { token: "cyc-secret" };
    obj.self = obj;
    log.info({ obj }, "cycle");
    expect(c.raw()).not.toContain("cyc-secret");
    expect(c.lines()).toHaveLength(1);
  });
});

describe("isSecretKey / scrubSecrets", () => {
  it("classifies keys", () => {
    for (const k of ["password", "Password", "secret_access_key", "secretAccessKey", "x-api-key", "platformToken", "clientSecret", "data", "userData", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_CLIENT_SECRET"]) {
      expect(isSecretKey(k), k).toBe(true);
    }
    for (const k of ["name", "secretRef", "tokenSecretRef", "region", "namespace", "resourceVersion"]) {
      expect(isSecretKey(k), k).toBe(false);
    }
  });

  it("returns a scrubbed copy", () => {
    expect(scrubSecrets({ a: [{ token: "x" }, 1], b: "ok" })).toEqual({ a: [{ token: "[REDACTED]" }, 1], b: "ok" });
  });
});

describe("redactString", () => {
  it("removes every occurrence of every secret value, longest first", () => {
    const s = `auth failed for key ${SECRETS.secretAccessKey} (again ${SECRETS.secretAccessKey}) token=${SECRETS.token}`;
    const out = redactString(s, [SECRETS.token, SECRETS.secretAccessKey, "", undefined]);
    expect(out).toBe("auth failed for key [REDACTED] (again [REDACTED]) token=[REDACTED]");
  });

  it("removes the trimmed value and the base64 form", () => {
    const secret = "file-secret-value\n";
    const b64 = Buffer.from(secret).toString("base64");
    const out = redactString(`value file-secret-value and ${b64}`, [secret]);
    expect(out).not.toContain("file-secret-value");
    expect(out).not.toContain(b64);
  });

  it("leaves text without secrets alone; ignores empty secrets", () => {
    expect(redactString("nothing to hide", ["", null, undefined])).toBe("nothing to hide");
  });

  it("createRedactor gives the same result", () => {
    const r = createRedactor(["abc-secret"]);
    expect(r("x abc-secret y")).toBe("x [REDACTED] y");
  });
});

describe("lazyChild", () => {
  it("logs with the bindings as a pino child does, and is made only when a line is written", () => {
    const c = collector();
    const parent = createLogger({ level: "info", destination: c.stream });
    let made = 0;
    const child = parent.child.bind(parent);
    parent.child = ((b: Record<string, unknown>) => {
      made++;
      return child(b);
    }) as typeof parent.child;
    const log = lazyChild(parent, { run: "ns/r1", password: SECRETS.password });
    log.debug("off: dropped");
    log.trace({ x: 1 }, "off: dropped");
    expect(made).toBe(0);
    log.info({ step: 1 }, "first");
    log.warn("second");
    expect(made).toBe(1);
    const lines = c.lines();
    expect(lines.map((l) => l.msg)).toEqual(["first", "second"]);
    expect(lines[0]).toMatchObject({ run: "ns/r1", step: 1, password: "[REDACTED]" });
    expect(lines[1]).toMatchObject({ run: "ns/r1" });
    expect(c.raw()).not.toContain(SECRETS.password);
  });

  it("follows the parent's level until made, and its own level after", () => {
    const c = collector();
    const parent = createLogger({ level: "warn", destination: c.stream });
    const log = lazyChild(parent, { ce: "ns/ce1" });
    log.info("off at warn");
    parent.level = "info";
    log.info("on at info");
    log.level = "error";
    log.warn("off at error");
    log.error("on at error");
    expect(c.lines().map((l) => [l.msg, l.ce])).toEqual([["on at info", "ns/ce1"], ["on at error", "ns/ce1"]]);
    expect(parent.level).toBe("info");
  });

  it("passes other members on (bindings, child, isLevelEnabled)", () => {
    const c = collector();
    const log = lazyChild(createLogger({ level: "info", destination: c.stream }), { run: "ns/r2" });
    expect(log.bindings()).toEqual({ run: "ns/r2" });
    expect(log.isLevelEnabled("debug")).toBe(false);
    log.child({ step: "launch" }).info("nested");
    expect(c.lines()[0]).toMatchObject({ run: "ns/r2", step: "launch", msg: "nested" });
  });
});
