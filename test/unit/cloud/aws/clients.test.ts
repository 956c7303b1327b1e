import { IAMServiceException } from "@aws-sdk/client-iam";
import { EC2ServiceException } from "@aws-sdk/client-ec2";
import { describe, expect, it, vi } from "vitest";
import {
  AwsClientCache,
  awsCall,
  awsClients,
  awsErrorCode,
  endpointFromEnv,
  handlerLogger,
  mapAwsError,
  type AwsClientOptions,
  type AwsClients,
} from "../../../../src/cloud/aws/clients.js";
import { credentialProvider, credentialsFingerprint, parseSecretCredentials } from "../../../../src/cloud/aws/credentials.js";
import { CloudError, type ResolvedCredentials } from "../../../../src/cloud/provider.js";
import { AwsProvider } from "../../../../src/cloud/aws/provider.js";
import { createLogger, type Logger } from "../../../../src/engine/logger.js";
import type { ComputeEnvironment } from "../../../../src/api/types.js";

const SECRET_VALUE = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY-do-not-print";

function secret(data: Record<string, string>): ResolvedCredentials {
  return { source: "secret", secretName: "aws-creds", data };
}

function iamError(name: string, status: number, message = "boom"): IAMServiceException {
  return new IAMServiceException({ name, $fault: status >= 500 ? "server" : "client", $metadata: { httpStatusCode: status }, message });
}
function ec2Error(name: string, status: number, message = "boom"): EC2ServiceException {
  return new EC2ServiceException({ name, $fault: status >= 500 ? "server" : "client", $metadata: { httpStatusCode: status }, message });
}

describe("credentials from a Secret", () => {
  it("names the Secret and the missing key, never a value", () => {
    const err = (() => {
      try {
        parseSecretCredentials(secret({ accessKeyId: "AKIAEXAMPLE", secretAccessKey: "" }), { secretLabel: "team-a/aws-creds" });
      } catch (e) {
        return e as CloudError;
      }
      throw new Error("no error");
    })();
    expect(err).toBeInstanceOf(CloudError);
    expect(err.kind).toBe("Terminal");
    expect(err.reason).toBe("InvalidCredentials");
    expect(err.message).toContain('Secret team-a/aws-creds has no key "secretAccessKey"');
    expect(err.message).not.toContain("AKIAEXAMPLE");
    expect(() => parseSecretCredentials(secret({ secretAccessKey: SECRET_VALUE }))).toThrow(/Secret aws-creds has no key "accessKeyId"/);
    try {
      parseSecretCredentials(secret({ secretAccessKey: SECRET_VALUE }));
    } catch (e) {
      expect(String((e as Error).message)).not.toContain(SECRET_VALUE);
    }
  });

  it("accepts keys, session token, role ARN and external id; checks the role ARN", () => {
    expect(parseSecretCredentials(secret({ accessKeyId: "A", secretAccessKey: "S", sessionToken: "T" }))).toEqual({ accessKeyId: "A", secretAccessKey: "S", sessionToken: "T" });
    expect(parseSecretCredentials(secret({ accessKeyId: "A", secretAccessKey: "S", roleArn: "arn:aws:iam::123456789012:role/ops", externalId: "x" })).roleArn).toBe("arn:aws:iam::123456789012:role/ops");
    expect(() => parseSecretCredentials(secret({ accessKeyId: "A", secretAccessKey: "S", roleArn: "ops" }))).toThrow(/"roleArn" is not an IAM role ARN/);
    expect(() => parseSecretCredentials(secret({ accessKeyId: "A", secretAccessKey: "S", externalId: "x" }))).toThrow(/"externalId" but no "roleArn"/);
  });

  it("returns static keys, an assume-role provider, or the ambient chain", () => {
    expect(credentialProvider(secret({ accessKeyId: "A", secretAccessKey: "S" }), { region: "eu-west-1" })).toEqual({ accessKeyId: "A", secretAccessKey: "S" });
    expect(typeof credentialProvider(secret({ accessKeyId: "A", secretAccessKey: "S", roleArn: "arn:aws:iam::123456789012:role/r" }), { region: "eu-west-1" })).toBe("function");
    expect(typeof credentialProvider({ source: "ambient", data: {} }, { region: "eu-west-1" })).toBe("function");
  });

  it("spec.aws.roleArn: assumed with the ambient identity, one client set per role and external id", () => {
    const provider = new AwsProvider({ endpoint: "http://127.0.0.1:1" });
    const ceWith = (aws: Record<string, string>) => ({
      metadata: { namespace: "n", name: "c", uid: "u" },
      spec: { provider: "aws", aws: { region: "eu-west-1", workDir: "s3://b/w", ...aws } },
    }) as unknown as ComputeEnvironment;
    const ambient: ResolvedCredentials = { source: "ambient", data: {} };
    const ctx = (aws: Record<string, string>, credentials = ambient) => ({ ce: ceWith(aws), credentials, logger: createLogger({ level: "silent" }) });
    const bare = provider.clientsFor(ctx({}));
    const a = provider.clientsFor(ctx({ roleArn: "arn:aws:iam::123456789012:role/a", externalId: "x1" }));
    expect(a).not.toBe(bare);
    expect(provider.clientsFor(ctx({ roleArn: "arn:aws:iam::123456789012:role/a", externalId: "x1" }))).toBe(a);
    expect(provider.clientsFor(ctx({ roleArn: "arn:aws:iam::123456789012:role/a", externalId: "x2" }))).not.toBe(a);
    expect(provider.clientsFor(ctx({ roleArn: "arn:aws:iam::123456789012:role/b" }))).not.toBe(a);
    // With a Secret the spec's role is not used (admission refuses the pair anyway).
    const keys = secret({ accessKeyId: "A", secretAccessKey: "S" });
    expect(provider.clientsFor(ctx({ roleArn: "arn:aws:iam::123456789012:role/a" }, keys))).toBe(provider.clientsFor(ctx({}, keys)));
    expect(typeof credentialProvider({ source: "ambient", data: { roleArn: "arn:aws:iam::123456789012:role/a" } }, { region: "eu-west-1" })).toBe("function");
    expect(() => credentialProvider({ source: "ambient", data: { roleArn: "not-an-arn" } }, { region: "eu-west-1" })).toThrow(/spec.aws.roleArn is not an IAM role ARN/);
  });

  it("fingerprints change when any key or value changes and not with key order", () => {
    const a = credentialsFingerprint(secret({ accessKeyId: "A", secretAccessKey: "S" }));
    expect(credentialsFingerprint(secret({ secretAccessKey: "S", accessKeyId: "A" }))).toBe(a);
    expect(credentialsFingerprint(secret({ accessKeyId: "A", secretAccessKey: "S2" }))).not.toBe(a);
    expect(credentialsFingerprint({ source: "ambient", data: {} })).not.toBe(credentialsFingerprint(secret({})));
    expect(a).not.toContain("S");
  });
});

describe("client cache", () => {
  function fakeFactory(): { factory: (o: AwsClientOptions) => AwsClients; made: AwsClientOptions[]; destroyed: number[] } {
    const made: AwsClientOptions[] = [];
    const destroyed: number[] = [];
    return {
      made,
      destroyed,
      factory: (o) => {
        const n = made.push(o) - 1;
        return { region: o.region, endpoint: undefined, destroy: () => destroyed.push(n) } as unknown as AwsClients;
      },
    };
  }

  it("reuses clients for equal credentials and makes new ones after rotation", () => {
    const f = fakeFactory();
    const cache = new AwsClientCache({ factory: f.factory });
    const c1 = cache.get({ credentials: secret({ accessKeyId: "A", secretAccessKey: "S" }), region: "eu-west-1" });
    const c2 = cache.get({ credentials: secret({ accessKeyId: "A", secretAccessKey: "S" }), region: "eu-west-1" });
    expect(c2).toBe(c1);
    const c3 = cache.get({ credentials: secret({ accessKeyId: "A", secretAccessKey: "ROTATED" }), region: "eu-west-1" });
    expect(c3).not.toBe(c1);
    const c4 = cache.get({ credentials: secret({ accessKeyId: "A", secretAccessKey: "S" }), region: "us-east-1" });
    expect(c4).not.toBe(c1);
    expect(f.made).toHaveLength(3);
  });

  it("destroys the least recently used entries beyond its size", () => {
    const f = fakeFactory();
    const cache = new AwsClientCache({ factory: f.factory, max: 2 });
    const opts = (k: string): AwsClientOptions => ({ credentials: secret({ accessKeyId: k, secretAccessKey: "S" }), region: "eu-west-1" });
    cache.get(opts("a"));
    cache.get(opts("b"));
    cache.get(opts("a")); // a is now the most recent
    cache.get(opts("c")); // evicts b (index 1)
    expect(f.destroyed).toEqual([1]);
    expect(cache.size).toBe(2);
    cache.clear();
    expect(f.destroyed.sort()).toEqual([0, 1, 2]);
  });

  it("builds real SDK clients pointed at the endpoint override", async () => {
    const c = awsClients({ credentials: secret({ accessKeyId: "A", secretAccessKey: "S" }), region: "eu-west-1", endpoint: "http://127.0.0.1:1" });
    try {
      expect(c.region).toBe("eu-west-1");
      expect(c.endpoint).toBe("http://127.0.0.1:1");
      expect(await c.ec2.config.region()).toBe("eu-west-1");
      expect(await c.ec2.config.maxAttempts()).toBe(3);
      const ep = await c.iam.config.endpoint?.();
      expect(ep?.hostname).toBe("127.0.0.1");
      expect(await c.s3.config.forcePathStyle).toBe(true);
    } finally {
      c.destroy();
    }
    expect(() => awsClients({ credentials: secret({ accessKeyId: "A" }), region: "eu-west-1", secretLabel: "ns/s" })).toThrow(/Secret ns\/s has no key "secretAccessKey"/);
  });

  it("sends the HTTP handler's warnings (all sockets busy) to the given logger, not to the console", async () => {
    const warned: { obj: unknown; msg: string }[] = [];
    const logger = { warn: (obj: unknown, msg: string) => void warned.push({ obj, msg }) } as unknown as Pick<Logger, "warn">;
    const c = awsClients({ credentials: secret({ accessKeyId: "A", secretAccessKey: "S" }), region: "eu-west-1", endpoint: "http://127.0.0.1:1", logger });
    const consoleWarn = vi.spyOn(console, "warn").mockImplementation(() => undefined);
    try {
      type WarnLogger = { warn(msg: string): void };
      // The SDK's own NodeHttpHandler and its socket check, as it runs before each request.
      const handler = c.ec2.config.requestHandler as unknown as {
        configProvider: Promise<{ logger: WarnLogger }>;
        constructor: { checkSocketUsage(agent: unknown, since: number, logger: WarnLogger): number };
      };
      const config = await handler.configProvider;
      // An agent with every socket in use and requests waiting, as under a burst of calls.
      const busy = { maxSockets: 1, sockets: { "h:80:": [{}] }, requests: { "h:80:": [{}, {}] } };
      expect(handler.constructor.checkSocketUsage(busy, 0, config.logger)).toBeGreaterThan(0);
      expect(warned).toHaveLength(1);
      expect(warned[0]?.msg).toBe("AWS SDK HTTP handler warning");
      expect(JSON.stringify(warned[0]?.obj)).toContain("socket usage at capacity=1");
      expect(consoleWarn).not.toHaveBeenCalled();
      // Without a logger the warnings are dropped rather than printed as plain text.
      handlerLogger(undefined).warn("x");
      expect(consoleWarn).not.toHaveBeenCalled();
    } finally {
      consoleWarn.mockRestore();
      c.destroy();
    }
  });

  it("reads the endpoint override from VMFORGE_AWS_ENDPOINT", () => {
    expect(endpointFromEnv({ VMFORGE_AWS_ENDPOINT: " http://127.0.0.1:5000 " })).toBe("http://127.0.0.1:5000");
    expect(endpointFromEnv({ VMFORGE_AWS_ENDPOINT: "" })).toBeUndefined();
    expect(endpointFromEnv({})).toBeUndefined();
  });
});

describe("SDK error mapping", () => {
  it("throttling and 5xx are Retryable with a hint", () => {
    for (const e of [iamError("Throttling", 400), ec2Error("RequestLimitExceeded", 503), iamError("TooManyRequestsException", 429), iamError("ThrottlingException", 400)]) {
      const m = mapAwsError(e, "iam:GetRole");
      expect(m.kind).toBe("Retryable");
      expect(m.reason).toBe("Throttled");
      expect(m.retryAfterMs).toBeGreaterThanOrEqual(2000);
    }
    const s = mapAwsError(iamError("ServiceFailure", 500), "iam:GetRole");
    expect([s.kind, s.reason]).toEqual(["Retryable", "AwsUnavailable"]);
    expect(mapAwsError(ec2Error("Unavailable", 503), "ec2:DescribeImages").kind).toBe("Retryable");
  });

  it("denied and bad credentials are Terminal and name the action", () => {
    const d = mapAwsError(iamError("AccessDenied", 403, "User: arn:aws:iam::123456789012:user/op is not authorized to perform: iam:CreateRole"), "iam:CreateRole");
    expect([d.kind, d.reason]).toEqual(["Terminal", "AccessDenied"]);
    expect(d.message).toMatch(/^iam:CreateRole: access denied; the operator's IAM policy must allow iam:CreateRole/);
    const u = mapAwsError(ec2Error("UnauthorizedOperation", 403, "You are not authorized. Encoded authorization failure message: AAAABBBB"), "ec2:DescribeVpcs");
    expect(u.reason).toBe("AccessDenied");
    expect(u.message).not.toContain("AAAABBBB");
    for (const [e, a] of [[iamError("InvalidClientTokenId", 403), "iam:GetRole"], [ec2Error("AuthFailure", 401), "ec2:DescribeImages"], [iamError("SignatureDoesNotMatch", 403), "iam:GetRole"]] as const) {
      const m = mapAwsError(e, a);
      expect([m.kind, m.reason]).toEqual(["Terminal", "InvalidCredentials"]);
      expect(m.message.startsWith(`${a}:`)).toBe(true);
    }
  });

  it("missing things are NotFound and keep the AWS code", () => {
    const n = mapAwsError(iamError("NoSuchEntity", 404), "iam:GetRole");
    expect([n.kind, n.reason]).toEqual(["NotFound", "NoSuchEntity"]);
    expect(awsErrorCode(n)).toBe("NoSuchEntity");
    const a = mapAwsError(ec2Error("InvalidAMIID.NotFound", 400), "ec2:DescribeImages");
    expect([a.kind, a.reason]).toEqual(["NotFound", "InvalidAMIIDNotFound"]);
  });

  it("other client errors are Terminal with the code as reason; network errors are Retryable", () => {
    const m = mapAwsError(iamError("MalformedPolicyDocument", 400), "iam:PutRolePolicy");
    expect([m.kind, m.reason]).toEqual(["Terminal", "MalformedPolicyDocument"]);
    const net = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
    expect(mapAwsError(net, "iam:GetRole").kind).toBe("Retryable");
    expect(mapAwsError(new Error("???"), "iam:GetRole").kind).toBe("Retryable");
    const ce = CloudError.terminal("X", "y");
    expect(mapAwsError(ce, "iam:GetRole")).toBe(ce);
  });

  it("an unreadable error body is judged by its HTTP status", () => {
    const unreadable = (status: number) =>
      Object.assign(new SyntaxError(`Unexpected token '<', "<?xml vers"... is not valid JSON\n  Deserialization error: to see the raw response`), { $metadata: { httpStatusCode: status } });
    expect(mapAwsError(unreadable(403), "logs:GetLogEvents")).toMatchObject({ kind: "Terminal", reason: "AccessDenied" });
    expect(mapAwsError(unreadable(401), "logs:GetLogEvents")).toMatchObject({ kind: "Terminal", reason: "InvalidCredentials" });
    expect(mapAwsError(unreadable(404), "logs:GetLogEvents")).toMatchObject({ kind: "NotFound" });
    expect(mapAwsError(unreadable(502), "logs:GetLogEvents")).toMatchObject({ kind: "Retryable", reason: "AwsUnavailable" });
  });

  it("awsCall maps failures and passes results through", async () => {
    await expect(awsCall("iam:GetRole", async () => 7)).resolves.toBe(7);
    await expect(awsCall("iam:GetRole", async () => { throw iamError("Throttling", 400); })).rejects.toMatchObject({ kind: "Retryable", reason: "Throttled" });
  });

  it("a refused connection from a real client becomes Retryable NetworkError", async () => {
    const c = awsClients({ credentials: secret({ accessKeyId: "A", secretAccessKey: "S" }), region: "eu-west-1", endpoint: "http://127.0.0.1:1", maxAttempts: 1 });
    try {
      const { GetRoleCommand } = await import("@aws-sdk/client-iam");
      await expect(awsCall("iam:GetRole", () => c.iam.send(new GetRoleCommand({ RoleName: "x" })))).rejects.toMatchObject({ kind: "Retryable", reason: "NetworkError" });
    } finally {
      c.destroy();
    }
  });
});
