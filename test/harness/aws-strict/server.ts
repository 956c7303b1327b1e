// The strict AWS layer: an HTTP server on loopback in front of moto that makes it behave as AWS
// does where moto is kinder (see test/harness/README.md). It reads each request (service,
// operation, parameters), answers some itself (faults, denials, idempotent repeats, capacity),
// forwards the rest to moto byte for byte, and rewrites a few answers (eventual consistency).
// Every behaviour is off by default and switched through a small control API on the same port
// (test/harness/aws-strict/client.ts). POST /moto-api/reset also resets the layer.
import { readFileSync } from "node:fs";
import { createServer, Agent, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { applyPatch, CONTROL_PREFIX, defaultConfig, type CrashPoint, type CrashRecord, type RateLimitRule, type StrictAwsConfigPatch, type StrictAwsStats } from "./config.js";
import { evaluate, globMatch, trustAllows, type ConditionContext, type Decision, type PolicyDocument } from "./policy-eval.js";
import { verifySigV4 } from "./sigv4.js";
import { describeRequest, ec2Filters, ec2Unauthorized, errorAnswer, faultAnswer, isWriteRequest, queryList, type AwsRequest, type HttpAnswer } from "./wire.js";
import { element, elements, parseXml, textOf, writeXml, type XmlElement } from "./xml.js";

export interface StrictAwsOptions {
  /** moto's endpoint (http://127.0.0.1:port). */
  upstream: string;
  /** Port to listen on (default: any free one). */
  port?: number;
  log?: (msg: string) => void;
}

export interface StrictAws {
  /** http URL of the layer: use it as every AWS SDK client's endpoint, and for the control API. */
  endpoint: string;
  /** moto behind it. */
  upstream: string;
  stop(): Promise<void>;
}

const DEFAULT_ACCOUNT = "123456789012";

interface Identity {
  secret: string;
  arn: string;
  account: string;
  kind: "user" | "role";
  /** user name or role name whose policies apply */
  name: string;
  sessionToken?: string;
}

interface InstanceRecord {
  launchedAt: number;
  hiddenDescribesLeft: number;
  terminatedAt?: number;
  /** Set by a TerminateInstances through the layer (consistency.shuttingDownMs): shown shutting-down until then. */
  shuttingDownUntil?: number;
}

interface StoredLaunch {
  fingerprint: string;
  answer: HttpAnswer;
}

/** What a ModifyInstanceAttribute sets termination protection to, if it sets it. */
function protectionSetTo(req: AwsRequest): boolean | undefined {
  const p = req.params;
  const v = p.get("DisableApiTermination.Value") ?? (p.get("Attribute") === "disableApiTermination" ? p.get("Value") : null);
  return v === null ? undefined : v === "true";
}

/**
 * handleAws's answer when the caller was killed at a crash point, or a held or waiting call was
 * dropped by a reset or the layer stopping: the connection is dropped, nothing is answered.
 */
const DROPPED = Symbol("dropped");

/** Whether a process is gone (or a zombie, which runs no code any more). Linux /proc. */
function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z";
  } catch {
    return true;
  }
}

/** SIGKILLs `pid` and waits (up to 2 s) until it runs no more code, so it cannot act on anything sent after. */
async function killAndWait(pid: number): Promise<void> {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    return; // already gone
  }
  const deadline = Date.now() + 2_000;
  while (!processGone(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
}

const HOP_HEADERS = new Set(["connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"]);

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.once("end", () => resolve(Buffer.concat(chunks)));
    req.once("error", reject);
  });
}

function bump(map: Record<string, number>, key: string): void {
  map[key] = (map[key] ?? 0) + 1;
}

function decodePolicy(doc: string | undefined): PolicyDocument | undefined {
  if (!doc) return undefined;
  for (const candidate of [doc, (() => {
    try {
      return decodeURIComponent(doc);
    } catch {
      return doc;
    }
  })()]) {
    try {
      return JSON.parse(candidate) as PolicyDocument;
    } catch {
      // try the next form
    }
  }
  return undefined;
}

function accountOfArn(arn: string): string {
  return arn.split(":")[4] || DEFAULT_ACCOUNT;
}

function ec2Arn(region: string, account: string, id: string): string {
  const prefix = id.slice(0, id.indexOf("-"));
  const type: Record<string, string> = { i: "instance", vol: "volume", sg: "security-group", subnet: "subnet", vpc: "vpc", eni: "network-interface", snap: "snapshot", igw: "internet-gateway", rtb: "route-table" };
  if (prefix === "ami") return `arn:aws:ec2:${region}::image/${id}`;
  return `arn:aws:ec2:${region}:${account}:${type[prefix] ?? prefix}/${id}`;
}

function emptyStats(): StrictAwsStats {
  return { calls: {}, writes: {}, faults: {}, throttled: {}, refused: {}, held: {}, holding: {} }; // holding: filled in when read
}

export async function startStrictAws(opts: StrictAwsOptions): Promise<StrictAws> {
  const upstream = new URL(opts.upstream);
  const log = opts.log ?? (() => undefined);
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });

  let config = defaultConfig();
  let stats: StrictAwsStats = emptyStats();
  let crashArmed: CrashPoint[] = [];
  let crashFired: CrashRecord[] = [];
  const launches = new Map<string, StoredLaunch>();
  const tokenLocks = new Map<string, Promise<unknown>>();
  const instances = new Map<string, InstanceRecord>();
  /**
   * Instances with termination protection on, as set through the layer (RunInstances with
   * DisableApiTermination, ModifyInstanceAttribute): a TerminateInstances naming one is answered
   * by protectionRefusal. Kept across the layer's own resets (moto keeps the instances), cleared
   * with moto's state.
   */
  const protectedIds = new Set<string>();
  const profiles = new Map<string, { changedAt: number; rejectionsLeft: number }>();
  const identities = new Map<string, Identity>();
  const policyCache = new Map<string, PolicyDocument[]>();
  /**
   * With iam.policyChangeDelayMs: each identity's policies as they were just before each IAM change
   * of the last delay, oldest first. An access check at time t goes by the policies of t - delay:
   * those saved before the first change after t - delay, else (no change since) the current ones.
   */
  const beforeChanges: { at: number; docs: Map<string, PolicyDocument[]> }[] = [];
  const subnetZones = new Map<string, string>();
  const regionZones = new Map<string, string[]>();

  function resetState(): void {
    config = defaultConfig();
    stats = emptyStats();
    crashArmed = [];
    crashFired = [];
    releaseHolds(true);
    launches.clear();
    instances.clear();
    protectedIds.clear();
    profiles.clear();
    identities.clear();
    policyCache.clear();
    beforeChanges.length = 0;
    subnetZones.clear();
  }

  // ------------------------------------------------------------------ forwarding to moto

  function forward(method: string, url: string, headers: IncomingMessage["headers"], body: Buffer): Promise<HttpAnswer> {
    return new Promise((resolve, reject) => {
      const out: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_HEADERS.has(k)) out[k] = v;
      out["content-length"] = String(body.length);
      const r = httpRequest({ host: upstream.hostname, port: upstream.port, method, path: url, headers: out, agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.once("error", reject);
        res.once("end", () => {
          const h: Record<string, string> = {};
          for (const [k, v] of Object.entries(res.headers)) if (v !== undefined && !HOP_HEADERS.has(k)) h[k] = Array.isArray(v) ? v.join(", ") : v;
          // A HEAD answer has no body but tells the object's length.
          if (method === "HEAD" && typeof res.headers["content-length"] === "string") h["content-length"] = res.headers["content-length"];
          resolve({ status: res.statusCode ?? 502, headers: h, body: Buffer.concat(chunks) });
        });
      });
      r.once("error", reject);
      r.end(body);
    });
  }

  /** A query-protocol call to moto as the account's administrator (moto does not check it). */
  async function motoQuery(service: "iam" | "ec2", region: string, params: Record<string, string>): Promise<XmlElement | undefined> {
    const body = Buffer.from(new URLSearchParams({ ...params, Version: service === "iam" ? "2010-05-08" : "2016-11-15" }).toString());
    const headers = {
      host: upstream.host,
      "content-type": "application/x-www-form-urlencoded; charset=utf-8",
      authorization: `AWS4-HMAC-SHA256 Credential=testing/20260101/${region}/${service}/aws4_request, SignedHeaders=host, Signature=0`,
      "x-amz-date": "20260101T000000Z",
    };
    const ans = await forward("POST", "/", headers, body);
    if (ans.status !== 200) return undefined;
    return parseXml(ans.body.toString("utf8")).root;
  }

  const members = (el: XmlElement | undefined, ...path: string[]): XmlElement[] => elements(element(el, ...path), "member");

  /** The policies access checks of this identity go by now (see beforeChanges). */
  async function policiesOf(id: Identity): Promise<PolicyDocument[]> {
    const delay = config.iam.policyChangeDelayMs ?? 0;
    if (delay > 0) {
      const since = Date.now() - delay;
      const then = beforeChanges.find((c) => c.at > since)?.docs.get(`${id.kind}/${id.name}`);
      if (then) return then;
    }
    return currentPolicies(id);
  }

  /** The identity's policies as IAM (moto) holds them now. */
  async function currentPolicies(id: Identity): Promise<PolicyDocument[]> {
    const cacheKey = `${id.kind}/${id.name}`;
    const hit = policyCache.get(cacheKey);
    if (hit) return hit;
    const docs: PolicyDocument[] = [];
    const owners: { kind: "User" | "Role" | "Group"; name: string }[] = [{ kind: id.kind === "user" ? "User" : "Role", name: id.name }];
    if (id.kind === "user") {
      const groups = await motoQuery("iam", "us-east-1", { Action: "ListGroupsForUser", UserName: id.name });
      for (const g of members(groups, "ListGroupsForUserResult", "Groups")) owners.push({ kind: "Group", name: textOf(g, "GroupName") ?? "" });
    }
    for (const o of owners) {
      const nameParam = { [`${o.kind}Name`]: o.name };
      const attached = await motoQuery("iam", "us-east-1", { Action: `ListAttached${o.kind}Policies`, ...nameParam });
      for (const m of members(attached, `ListAttached${o.kind}PoliciesResult`, "AttachedPolicies")) {
        const arn = textOf(m, "PolicyArn") ?? "";
        const pol = await motoQuery("iam", "us-east-1", { Action: "GetPolicy", PolicyArn: arn });
        const version = textOf(pol, "GetPolicyResult", "Policy", "DefaultVersionId") ?? "v1";
        const v = await motoQuery("iam", "us-east-1", { Action: "GetPolicyVersion", PolicyArn: arn, VersionId: version });
        const doc = decodePolicy(textOf(v, "GetPolicyVersionResult", "PolicyVersion", "Document"));
        if (doc) docs.push(doc);
      }
      const inline = await motoQuery("iam", "us-east-1", { Action: `List${o.kind}Policies`, ...nameParam });
      for (const m of members(inline, `List${o.kind}PoliciesResult`, "PolicyNames")) {
        const policyName = textOf(m) ?? "";
        const got = await motoQuery("iam", "us-east-1", { Action: `Get${o.kind}Policy`, ...nameParam, PolicyName: policyName });
        const doc = decodePolicy(textOf(got, `Get${o.kind}PolicyResult`, "PolicyDocument"));
        if (doc) docs.push(doc);
      }
    }
    policyCache.set(cacheKey, docs);
    return docs;
  }

  async function profileRoleArn(profileName: string): Promise<string | undefined> {
    const got = await motoQuery("iam", "us-east-1", { Action: "GetInstanceProfile", InstanceProfileName: profileName });
    return textOf(members(got, "GetInstanceProfileResult", "InstanceProfile", "Roles")[0], "Arn");
  }

  async function zoneOfSubnet(region: string, subnetId: string): Promise<string | undefined> {
    const hit = subnetZones.get(subnetId);
    if (hit) return hit;
    const got = await motoQuery("ec2", region, { Action: "DescribeSubnets", "SubnetId.1": subnetId });
    const az = textOf(element(got, "subnetSet", "item"), "availabilityZone");
    if (az) subnetZones.set(subnetId, az);
    return az;
  }

  async function zonesOf(region: string): Promise<string[]> {
    const hit = regionZones.get(region);
    if (hit) return hit;
    const got = await motoQuery("ec2", region, { Action: "DescribeAvailabilityZones" });
    const zones = elements(element(got, "availabilityZoneInfo"), "item").map((i) => textOf(i, "zoneName") ?? "").filter(Boolean);
    regionZones.set(region, zones);
    return zones;
  }

  // ------------------------------------------------------------------ IAM

  function resourcesOf(req: AwsRequest, account: string): string[] {
    const p = req.params;
    const r = req.region;
    switch (req.service) {
      case "iam": {
        const profile = p.get("InstanceProfileName");
        if (profile) return [`arn:aws:iam::${account}:instance-profile${p.get("Path") ?? "/"}${profile}`];
        const role = p.get("RoleName");
        if (role) return [`arn:aws:iam::${account}:role${req.operation === "CreateRole" ? (p.get("Path") ?? "/") : "/"}${role}`];
        const user = p.get("UserName");
        if (user) return [`arn:aws:iam::${account}:user/${user}`];
        const policyArn = p.get("PolicyArn");
        if (policyArn) return [policyArn];
        if (req.operation === "CreatePolicy") return [`arn:aws:iam::${account}:policy${p.get("Path") ?? "/"}${p.get("PolicyName") ?? ""}`];
        return ["*"];
      }
      case "sts":
        return req.operation === "AssumeRole" ? [p.get("RoleArn") ?? "*"] : ["*"];
      case "ec2": {
        if (req.operation === "RunInstances") {
          const out = [`arn:aws:ec2:${r}:${account}:instance/*`, `arn:aws:ec2:${r}:${account}:volume/*`, `arn:aws:ec2:${r}:${account}:network-interface/*`];
          const image = p.get("ImageId");
          if (image) out.push(ec2Arn(r, account, image));
          const subnet = p.get("SubnetId");
          if (subnet) out.push(ec2Arn(r, account, subnet));
          for (const sg of queryList(p, "SecurityGroupId")) out.push(ec2Arn(r, account, sg));
          const key = p.get("KeyName");
          if (key) out.push(`arn:aws:ec2:${r}:${account}:key-pair/${key}`);
          return out;
        }
        if (/^(Terminate|Stop|Start|Reboot)Instances$/.test(req.operation)) return queryList(p, "InstanceId").map((id) => ec2Arn(r, account, id));
        if (req.operation === "CreateTags" || req.operation === "DeleteTags") return queryList(p, "ResourceId").map((id) => ec2Arn(r, account, id));
        return ["*"];
      }
      case "logs": {
        const group = typeof req.json?.logGroupName === "string" ? req.json.logGroupName : undefined;
        const stream = typeof req.json?.logStreamName === "string" ? req.json.logStreamName : undefined;
        if (group && stream) return [`arn:aws:logs:${r}:${account}:log-group:${group}:log-stream:${stream}`];
        if (group) return [`arn:aws:logs:${r}:${account}:log-group:${group}:*`];
        return ["*"];
      }
      case "s3":
        if (!req.bucket) return ["*"];
        return [req.key !== undefined ? `arn:aws:s3:::${req.bucket}/${req.key}` : `arn:aws:s3:::${req.bucket}`];
      default:
        return ["*"];
    }
  }

  function accessDenied(req: AwsRequest, who: string, action: string, resource: string, decision: Decision): HttpAnswer {
    const why = decision === "ExplicitDeny" ? `with an explicit deny in an identity-based policy` : `because no identity-based policy allows the ${action} action`;
    // S3 quotes the resource in its message; the other services do not.
    const shown = req.service === "s3" ? `"${resource}"` : resource;
    const text = `User: ${who} is not authorized to perform: ${action} on resource: ${shown} ${why}`;
    bump(stats.refused, req.action);
    if (req.service === "ec2") return ec2Unauthorized(req, text);
    if (req.json !== undefined) return errorAnswer(req, 400, "AccessDeniedException", text);
    return errorAnswer(req, 403, "AccessDenied", text);
  }

  function badCredentials(req: AwsRequest, kind: "unknown" | "signature"): HttpAnswer {
    bump(stats.refused, req.action);
    const sigText = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
    if (req.service === "ec2") return errorAnswer(req, 401, "AuthFailure", "AWS was not able to validate the provided access credentials");
    if (req.service === "s3") {
      return kind === "unknown"
        ? errorAnswer(req, 403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        : errorAnswer(req, 403, "SignatureDoesNotMatch", sigText);
    }
    if (req.json !== undefined) {
      return kind === "unknown"
        ? errorAnswer(req, 400, "UnrecognizedClientException", "The security token included in the request is invalid.")
        : errorAnswer(req, 400, "InvalidSignatureException", sigText);
    }
    return kind === "unknown"
      ? errorAnswer(req, 403, "InvalidClientTokenId", "The security token included in the request is invalid.")
      : errorAnswer(req, 403, "SignatureDoesNotMatch", sigText);
  }

  /** Undefined when AWS would let the request through; else its refusal. */
  async function authorize(req: AwsRequest): Promise<HttpAnswer | undefined> {
    const akid = req.accessKeyId ?? "";
    if (config.iam.rootAccessKeys.includes(akid)) return undefined;
    const id = identities.get(akid);
    if (!id) return badCredentials(req, "unknown");
    if (verifySigV4(req, id.secret) !== "ok") return badCredentials(req, "signature");
    if (id.sessionToken !== undefined && req.headers["x-amz-security-token"] !== id.sessionToken) return badCredentials(req, "unknown");
    // AWS answers GetCallerIdentity for any valid credentials, whatever the policies say.
    if (req.action === "sts:GetCallerIdentity") return undefined;
    const policies = await policiesOf(id);
    const ctx: ConditionContext = { "aws:RequestedRegion": req.region, "aws:PrincipalArn": id.arn, "aws:PrincipalAccount": id.account };
    if (req.operation === "AssumeRole") {
      const roleArn = req.params.get("RoleArn") ?? "";
      const role = await motoQuery("iam", "us-east-1", { Action: "GetRole", RoleName: roleArn.slice(roleArn.lastIndexOf("/") + 1) });
      const trust = decodePolicy(textOf(role, "GetRoleResult", "Role", "AssumeRolePolicyDocument"));
      const externalId = req.params.get("ExternalId") ?? undefined;
      const trusted = trust ? trustAllows(trust, id.arn, id.account, { ...ctx, "sts:ExternalId": externalId }) : undefined;
      if (trusted === undefined) return accessDenied(req, id.arn, "sts:AssumeRole", roleArn, "ImplicitDeny");
      if (trusted === "exact") return undefined;
    }
    for (const resource of resourcesOf(req, id.account)) {
      const d = evaluate(policies, req.action, resource, ctx);
      if (d !== "Allow") return accessDenied(req, id.arn, req.action, resource, d);
    }
    // Actions AWS checks on top of the operation's own (dependent actions).
    let passed: string | undefined;
    if (req.operation === "RunInstances") {
      const ref = req.params.get("IamInstanceProfile.Arn") ?? req.params.get("IamInstanceProfile.Name");
      if (ref) passed = await profileRoleArn(ref.slice(ref.lastIndexOf("/") + 1));
    } else if (req.operation === "AddRoleToInstanceProfile") {
      passed = `arn:aws:iam::${id.account}:role/${req.params.get("RoleName") ?? ""}`;
    }
    if (passed) {
      const d = evaluate(policies, "iam:PassRole", passed, { ...ctx, "iam:PassedToService": "ec2.amazonaws.com" });
      if (d !== "Allow") return accessDenied(req, id.arn, "iam:PassRole", passed, d);
    }
    // Tags given at creation need the tagging permission too (IAM's iam:Tag*, EC2's ec2:CreateTags).
    if ((req.operation === "CreateRole" || req.operation === "CreateInstanceProfile") && req.params.has("Tags.member.1.Key")) {
      const tagAction = req.operation === "CreateRole" ? "iam:TagRole" : "iam:TagInstanceProfile";
      for (const resource of resourcesOf(req, id.account)) {
        const d = evaluate(policies, tagAction, resource, ctx);
        if (d !== "Allow") return accessDenied(req, id.arn, tagAction, resource, d);
      }
    }
    // Tags given at launch (TagSpecifications) need ec2:CreateTags on what they tag.
    if (req.operation === "RunInstances") {
      for (const [k, type] of req.params) {
        if (!/^TagSpecification\.\d+\.ResourceType$/.test(k)) continue;
        const resource = `arn:aws:ec2:${req.region}:${id.account}:${type}/*`;
        const d = evaluate(policies, "ec2:CreateTags", resource, { ...ctx, "ec2:CreateAction": "RunInstances" });
        if (d !== "Allow") return accessDenied(req, id.arn, "ec2:CreateTags", resource, d);
      }
    }
    return undefined;
  }

  /** S3 tells a caller without s3:ListBucket on the bucket that a missing key is AccessDenied, not NoSuchKey. */
  async function missingObjectAnswer(req: AwsRequest, ans: HttpAnswer): Promise<HttpAnswer> {
    const id = identities.get(req.accessKeyId ?? "");
    if (!id || config.iam.rootAccessKeys.includes(req.accessKeyId ?? "")) return ans;
    const d = evaluate(await policiesOf(id), "s3:ListBucket", `arn:aws:s3:::${req.bucket ?? ""}`, { "aws:RequestedRegion": req.region });
    return d === "Allow" ? ans : errorAnswer(req, 403, "AccessDenied", "Access Denied");
  }

  /**
   * Before an IAM change is carried out (iam.policyChangeDelayMs > 0): what every identity known so
   * far is allowed, so that access checks can go by it until the delay has passed. Identities first
   * seen after the change (no saved policies) go by the current ones.
   */
  async function saveBeforeChange(req: AwsRequest): Promise<void> {
    const delay = config.iam.policyChangeDelayMs ?? 0;
    if (delay <= 0 || req.service !== "iam" || /^(Get|List)/.test(req.operation)) return;
    const now = Date.now();
    while (beforeChanges.length > 0 && (beforeChanges[0]?.at ?? now) <= now - delay) beforeChanges.shift();
    const docs = new Map<string, PolicyDocument[]>();
    for (const id of identities.values()) {
      const key = `${id.kind}/${id.name}`;
      if (!docs.has(key)) docs.set(key, await currentPolicies(id));
    }
    beforeChanges.push({ at: Date.now(), docs });
  }

  /** Learns keys and invalidates cached policies from answers that change them. */
  function learnFromAnswer(req: AwsRequest, ans: HttpAnswer): void {
    if (ans.status !== 200) return;
    if (req.service === "ec2" && req.operation === "ModifyInstanceAttribute") {
      const on = protectionSetTo(req);
      const id = req.params.get("InstanceId") ?? "";
      if (on === true) protectedIds.add(id);
      if (on === false) protectedIds.delete(id);
    }
    if (req.service === "iam") {
      if (!/^(Get|List)/.test(req.operation)) {
        // The current policies change now; with policyChangeDelayMs, access checks keep going by
        // those saved before the change (saveBeforeChange) until the delay has passed.
        policyCache.clear();
      }
      if (req.operation === "CreateAccessKey") {
        const key = element(parseXml(ans.body.toString("utf8")).root, "CreateAccessKeyResult", "AccessKey");
        const user = textOf(key, "UserName") ?? "";
        const akid = textOf(key, "AccessKeyId");
        const secret = textOf(key, "SecretAccessKey");
        if (akid && secret) identities.set(akid, { secret, name: user, kind: "user", account: DEFAULT_ACCOUNT, arn: `arn:aws:iam::${DEFAULT_ACCOUNT}:user/${user}` });
      }
      if (req.operation === "DeleteAccessKey") identities.delete(req.params.get("AccessKeyId") ?? "");
      if (req.operation === "CreateInstanceProfile" || req.operation === "AddRoleToInstanceProfile") {
        const name = req.params.get("InstanceProfileName");
        if (name) profiles.set(name, { changedAt: Date.now(), rejectionsLeft: config.consistency.newProfileRejections });
      }
    }
    if (req.service === "sts" && req.operation === "AssumeRole") {
      const result = element(parseXml(ans.body.toString("utf8")).root, "AssumeRoleResult");
      const akid = textOf(result, "Credentials", "AccessKeyId");
      const secret = textOf(result, "Credentials", "SecretAccessKey");
      const token = textOf(result, "Credentials", "SessionToken");
      const arn = textOf(result, "AssumedRoleUser", "Arn") ?? "";
      const roleArn = req.params.get("RoleArn") ?? "";
      if (akid && secret) {
        identities.set(akid, { secret, arn, account: accountOfArn(roleArn), kind: "role", name: roleArn.slice(roleArn.lastIndexOf("/") + 1), ...(token ? { sessionToken: token } : {}) });
      }
    }
  }

  // ------------------------------------------------------------------ EC2 behaviours

  function refuse(req: AwsRequest, status: number, code: string, message: string): HttpAnswer {
    bump(stats.refused, req.action);
    return errorAnswer(req, status, code, message);
  }

  async function capacityRefusal(req: AwsRequest): Promise<HttpAnswer | undefined> {
    if (config.capacity.length === 0) return undefined;
    const type = req.params.get("InstanceType") ?? "m1.small";
    const subnet = req.params.get("SubnetId") ?? req.params.get("NetworkInterface.1.SubnetId");
    const zone = req.params.get("Placement.AvailabilityZone") ?? (subnet ? await zoneOfSubnet(req.region, subnet) : undefined) ?? `${req.region}a`;
    const rule = config.capacity.find(
      (r) => (r.count === undefined || r.count > 0) && (r.availabilityZone === "*" || r.availabilityZone === zone) && (r.instanceType === "*" || r.instanceType === type),
    );
    if (!rule) return undefined;
    if (rule.count !== undefined) rule.count--;
    const blocked = (z: string): boolean =>
      config.capacity.some((r) => r.error === rule.error && (r.count === undefined || r.count > 0 || r === rule) && (r.availabilityZone === "*" || r.availabilityZone === z) && (r.instanceType === "*" || r.instanceType === type));
    const others = (await zonesOf(req.region)).filter((z) => z !== zone && !blocked(z));
    if (rule.error === "Unsupported") {
      const choose = others.length > 0 ? `by not specifying an Availability Zone or choosing ${others.join(", ")}` : "by not specifying an Availability Zone";
      return refuse(req, 400, "Unsupported", `Your requested instance type (${type}) is not supported in your requested Availability Zone (${zone}). Please retry your request ${choose}.`);
    }
    const elsewhere = others.length > 0 ? ` You can currently get ${type} capacity by not specifying an Availability Zone in your request or choosing ${others.join(", ")}.` : "";
    return refuse(
      req,
      500,
      "InsufficientInstanceCapacity",
      `We currently do not have sufficient ${type} capacity in the Availability Zone you requested (${zone}). Our system will be working on provisioning additional capacity.${elsewhere}`,
    );
  }

  function profileRefusal(req: AwsRequest): HttpAnswer | undefined {
    const arn = req.params.get("IamInstanceProfile.Arn");
    const name = req.params.get("IamInstanceProfile.Name");
    const ref = arn ?? name;
    if (!ref) return undefined;
    const rec = profiles.get(ref.slice(ref.lastIndexOf("/") + 1));
    if (!rec) return undefined;
    const young = Date.now() - rec.changedAt < config.consistency.newProfileRejectedMs;
    if (!young && rec.rejectionsLeft <= 0) return undefined;
    if (!young) rec.rejectionsLeft--;
    return arn
      ? refuse(req, 400, "InvalidParameterValue", `Value (${arn}) for parameter iamInstanceProfile.arn is invalid. Invalid IAM Instance Profile ARN`)
      : refuse(req, 400, "InvalidParameterValue", `Value (${name}) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name`);
  }

  function recordLaunch(ans: HttpAnswer): void {
    if (ans.status !== 200) return;
    const root = parseXml(ans.body.toString("utf8")).root;
    for (const item of elements(element(root, "instancesSet"), "item")) {
      const id = textOf(item, "instanceId");
      if (id) instances.set(id, { launchedAt: Date.now(), hiddenDescribesLeft: config.consistency.newInstanceHiddenDescribes });
    }
  }

  /** RunInstances with DisableApiTermination: moto ignores it; the layer sets the attribute on the new instances, as EC2 launches them. */
  async function protectLaunched(req: AwsRequest, ans: HttpAnswer): Promise<void> {
    for (const item of elements(element(parseXml(ans.body.toString("utf8")).root, "instancesSet"), "item")) {
      const id = textOf(item, "instanceId");
      if (!id) continue;
      await motoQuery("ec2", req.region, { Action: "ModifyInstanceAttribute", InstanceId: id, "DisableApiTermination.Value": "true" });
      protectedIds.add(id);
    }
  }

  async function runInstances(req: AwsRequest): Promise<HttpAnswer> {
    const token = req.params.get("ClientToken");
    const launch = async (): Promise<HttpAnswer> => {
      const refused = (await capacityRefusal(req)) ?? profileRefusal(req);
      if (refused) return refused;
      const ans = await forward(req.method, req.url, req.headers, req.body);
      if (config.ec2ProfileErrors && ans.status === 404 && /<Code>NoSuchEntity<\/Code>/.test(ans.body.toString("utf8"))) {
        // moto: NoSuchEntity (404) for a profile that does not exist; EC2 says the parameter is invalid.
        const arn = req.params.get("IamInstanceProfile.Arn");
        const name = req.params.get("IamInstanceProfile.Name");
        if (arn) return refuse(req, 400, "InvalidParameterValue", `Value (${arn}) for parameter iamInstanceProfile.arn is invalid. Invalid IAM Instance Profile ARN`);
        if (name) return refuse(req, 400, "InvalidParameterValue", `Value (${name}) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name`);
      }
      recordLaunch(ans);
      if (ans.status === 200 && req.params.get("DisableApiTermination") === "true") await protectLaunched(req, ans);
      return ans;
    };
    if (!config.idempotency || !token) return launch();
    // EC2 scopes tokens to the account and region (not to the access key).
    const account = identities.get(req.accessKeyId ?? "")?.account ?? DEFAULT_ACCOUNT;
    const key = `${account}|${req.region}|${token}`;
    const fingerprint = [...req.params.entries()]
      .filter(([k]) => k !== "Action" && k !== "Version" && k !== "ClientToken")
      .map(([k, v]) => `${k}=${v}`)
      .sort()
      .join("&");
    // One request per token at a time, as EC2 serialises them.
    const prev = tokenLocks.get(key) ?? Promise.resolve();
    const run = prev.then(async (): Promise<HttpAnswer> => {
      const stored = launches.get(key);
      if (stored) {
        if (stored.fingerprint !== fingerprint) {
          return refuse(req, 400, "IdempotentParameterMismatch", `The client token ${token} is already in use with different request parameters.`);
        }
        return stored.answer;
      }
      const ans = await launch();
      if (ans.status === 200) launches.set(key, { fingerprint, answer: ans });
      return ans;
    });
    const settled = run.catch(() => undefined);
    tokenLocks.set(key, settled);
    void settled.then(() => {
      if (tokenLocks.get(key) === settled) tokenLocks.delete(key);
    });
    return run;
  }

  function consistencyActive(): boolean {
    const c = config.consistency;
    return c.newInstanceHiddenMs > 0 || c.newInstanceHiddenDescribes > 0 || c.newInstanceUnknownByIdMs > 0 || c.shuttingDownMs > 0 || c.terminatedVisibleMs !== null;
  }

  /** The requested IDs EC2 would not know yet (launched moments ago): answered as EC2 answers, NotFound. */
  function unknownYet(req: AwsRequest, now: number): HttpAnswer | undefined {
    const young = queryList(req.params, "InstanceId").filter((id) => {
      const rec = instances.get(id);
      return rec !== undefined && now - rec.launchedAt < config.consistency.newInstanceUnknownByIdMs;
    });
    if (young.length === 0) return undefined;
    return young.length === 1
      ? refuse(req, 400, "InvalidInstanceID.NotFound", `The instance ID '${young[0]}' does not exist`)
      : refuse(req, 400, "InvalidInstanceID.NotFound", `The instance IDs '${young.join(", ")}' do not exist`);
  }

  function forgotten(id: string, now: number): boolean {
    const rec = instances.get(id);
    const keep = config.consistency.terminatedVisibleMs;
    return keep !== null && rec?.terminatedAt !== undefined && now - (shuttingDownEnd(rec) ?? rec.terminatedAt) >= keep;
  }

  /**
   * When an instance terminated through the layer while shuttingDownMs was on stops showing
   * shutting-down: the window it was given then, cut short for good by any lower shuttingDownMs
   * configured since (shrinkShuttingDown), so an instance once shown terminated is never shown
   * shutting down again.
   */
  function shuttingDownEnd(rec: InstanceRecord): number | undefined {
    return rec.terminatedAt === undefined ? undefined : rec.shuttingDownUntil;
  }

  /** A new configuration's shuttingDownMs cuts the windows already given (never lengthens them). */
  function shrinkShuttingDown(): void {
    for (const rec of instances.values()) {
      if (rec.shuttingDownUntil === undefined || rec.terminatedAt === undefined) continue;
      rec.shuttingDownUntil = Math.min(rec.shuttingDownUntil, rec.terminatedAt + config.consistency.shuttingDownMs);
    }
  }

  function shuttingDown(id: string, now: number): boolean {
    const rec = instances.get(id);
    const end = rec ? shuttingDownEnd(rec) : undefined;
    return end !== undefined && now < end;
  }

  async function describeInstances(req: AwsRequest): Promise<HttpAnswer> {
    if (!consistencyActive()) return forward(req.method, req.url, req.headers, req.body);
    const now = Date.now();
    const gone = queryList(req.params, "InstanceId").filter((id) => forgotten(id, now));
    if (gone.length === 1) return refuse(req, 400, "InvalidInstanceID.NotFound", `The instance ID '${gone[0]}' does not exist`);
    if (gone.length > 1) return refuse(req, 400, "InvalidInstanceID.NotFound", `The instance IDs '${gone.join(", ")}' do not exist`);
    const young = unknownYet(req, now);
    if (young) return young;
    const ans = await forward(req.method, req.url, req.headers, req.body);
    if (ans.status !== 200) return ans;
    const filters = ec2Filters(req.params);
    const tagFiltered = filters.some((f) => f.name.startsWith("tag:") || f.name === "tag-key" || f.name === "tag-value");
    const stateFilters = filters.filter((f) => f.name === "instance-state-name");
    const doc = parseXml(ans.body.toString("utf8"));
    const reservations = element(doc.root, "reservationSet");
    let changed = false;
    for (const res of elements(reservations, "item")) {
      const set = element(res, "instancesSet");
      if (!set) continue;
      set.children = set.children.filter((c) => {
        if (typeof c === "string" || c.name !== "item") return true;
        const id = textOf(c, "instanceId") ?? "";
        let rec = instances.get(id);
        const terminated = textOf(c, "instanceState", "name") === "terminated";
        if (terminated) {
          if (!rec) {
            rec = { launchedAt: now, hiddenDescribesLeft: 0 };
            instances.set(id, rec);
          }
          rec.terminatedAt ??= now;
        }
        if (forgotten(id, now)) {
          changed = true;
          return false;
        }
        if (terminated && shuttingDown(id, now)) {
          changed = true;
          if (stateFilters.some((f) => !f.values.includes("shutting-down"))) return false;
          const state = element(c, "instanceState");
          if (state) state.children = state.children.map((x) => (typeof x === "string" ? x : x.name === "code" ? { ...x, children: ["32"] } : x.name === "name" ? { ...x, children: ["shutting-down"] } : x));
        }
        if (tagFiltered && rec) {
          const young = now - rec.launchedAt < config.consistency.newInstanceHiddenMs;
          if (young || rec.hiddenDescribesLeft > 0) {
            if (!young) rec.hiddenDescribesLeft--;
            changed = true;
            return false;
          }
        }
        return true;
      });
      if (elements(set, "item").length === 0 && reservations) {
        reservations.children = reservations.children.filter((c) => c !== res);
      }
    }
    if (!changed) return ans;
    return { ...ans, body: Buffer.from(writeXml(doc)) };
  }

  async function terminateInstances(req: AwsRequest): Promise<HttpAnswer> {
    const young = unknownYet(req, Date.now());
    if (young) return young;
    const named = queryList(req.params, "InstanceId");
    if (named.some((id) => protectedIds.has(id))) {
      const refused = await protectionRefusal(req, named);
      if (refused) return refused;
    }
    const ans = await forward(req.method, req.url, req.headers, req.body);
    if (ans.status === 200) terminatedIn(parseXml(ans.body.toString("utf8")).root);
    return ans;
  }

  /** Records the instances a TerminateInstances answer names as terminated now (shown shutting-down first, see shuttingDownMs). */
  function terminatedIn(root: XmlElement | undefined): void {
    const now = Date.now();
    for (const item of elements(element(root, "instancesSet"), "item")) {
      const id = textOf(item, "instanceId");
      if (!id) continue;
      const rec = instances.get(id) ?? { launchedAt: now, hiddenDescribesLeft: 0 };
      if (rec.terminatedAt === undefined && config.consistency.shuttingDownMs > 0) rec.shuttingDownUntil = now + config.consistency.shuttingDownMs;
      rec.terminatedAt ??= now;
      instances.set(id, rec);
    }
  }

  /**
   * A TerminateInstances naming an instance with termination protection (disableApiTermination) fails
   * as EC2 fails it: the instances in an Availability Zone that holds a protected one are not
   * terminated, the others named are. (moto ends those named before the protected one, whatever
   * their zone.) Undefined when the instances cannot all be described (moto then gives its own
   * answer, e.g. an unknown ID), or when moto says none is protected. A DryRun is not carried out.
   */
  async function protectionRefusal(req: AwsRequest, ids: string[]): Promise<HttpAnswer | undefined> {
    if (req.params.get("DryRun") === "true") return undefined;
    const byId = (list: string[]) => Object.fromEntries(list.map((id, i) => [`InstanceId.${i + 1}`, id]));
    const described = await motoQuery("ec2", req.region, { Action: "DescribeInstances", ...byId(ids) });
    if (!described) return undefined;
    const zone = new Map<string, string>();
    for (const r of elements(element(described, "reservationSet"), "item")) {
      for (const i of elements(element(r, "instancesSet"), "item")) zone.set(textOf(i, "instanceId") ?? "", textOf(i, "placement", "availabilityZone") ?? "");
    }
    const guarded: string[] = [];
    for (const id of ids.filter((x) => protectedIds.has(x))) {
      const attr = await motoQuery("ec2", req.region, { Action: "DescribeInstanceAttribute", InstanceId: id, Attribute: "disableApiTermination" });
      if (textOf(attr, "disableApiTermination", "value") === "true") guarded.push(id);
    }
    if (guarded.length === 0) return undefined;
    const held = new Set(guarded.map((id) => zone.get(id)));
    const others = ids.filter((id) => !held.has(zone.get(id)));
    if (others.length > 0) {
      terminatedIn(await motoQuery("ec2", req.region, { Action: "TerminateInstances", ...byId(others) }));
    }
    return refuse(req, 400, "OperationNotPermitted", `The instance '${guarded[0]}' may not be terminated. Modify its 'disableApiTermination' instance attribute and try again.`);
  }

  // ------------------------------------------------------------------ request handling

  function injectedFault(req: AwsRequest): HttpAnswer | undefined {
    for (const rule of config.faults) {
      if (rule.count !== undefined && rule.count <= 0) continue;
      if (!globMatch(rule.action ?? "*", req.action, true)) continue;
      if (Math.random() * 100 >= (rule.percent ?? 100)) continue;
      if (rule.count !== undefined) rule.count--;
      bump(stats.faults, req.action);
      return faultAnswer(req, rule.error, rule);
    }
    return undefined;
  }

  /** Token buckets of the rate limits in force, per rule and Region (a new configuration starts them full). */
  const buckets = new WeakMap<RateLimitRule, Map<string, { tokens: number; at: number }>>();
  function rateLimited(req: AwsRequest): HttpAnswer | undefined {
    for (const rule of config.rateLimits) {
      if (!globMatch(rule.action, req.action, true)) continue;
      const burst = rule.burst ?? rule.perSecond;
      let perRegion = buckets.get(rule);
      if (!perRegion) buckets.set(rule, (perRegion = new Map()));
      const now = Date.now();
      const b = perRegion.get(req.region) ?? { tokens: burst, at: now };
      b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * rule.perSecond);
      b.at = now;
      perRegion.set(req.region, b);
      if (b.tokens < 1) {
        bump(stats.throttled, req.action);
        return faultAnswer(req, "throttle");
      }
      b.tokens -= 1;
    }
    return undefined;
  }

  /** Requests held by a hold rule, each with what ends the hold: go on, or be dropped unanswered. */
  const heldNow = new Set<{ action: string; end: (drop: boolean) => void }>();
  /** Resets and the layer's stop so far: a call waiting out a latency rule across one is dropped. */
  let drops = 0;
  /** Ends every hold: the calls go on, or (a reset, the layer stopping) are dropped without an answer. */
  function releaseHolds(drop = false): number {
    if (drop) drops++;
    const n = heldNow.size;
    for (const h of [...heldNow]) h.end(drop);
    return n;
  }
  function holdingNow(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const h of heldNow) bump(out, h.action);
    return out;
  }

  /**
   * The service's own time for the request (latency rules), and a hold while one applies. True: the
   * call was dropped while held or waiting (a reset or the layer stopping), so it is neither carried
   * out nor answered.
   */
  async function serviceTime(req: AwsRequest): Promise<boolean> {
    const since = drops;
    const hold = config.holds.find((r) => (r.count === undefined || r.count > 0) && globMatch(r.action, req.action, true));
    if (hold) {
      if (hold.count !== undefined) hold.count--;
      bump(stats.held, req.action);
      const dropped = await new Promise<boolean>((resolve) => {
        const h = {
          action: req.action,
          end: (drop: boolean) => {
            heldNow.delete(h);
            resolve(drop);
          },
        };
        heldNow.add(h);
      });
      if (dropped) return true;
    }
    const rule = config.latencies.find((r) => globMatch(r.action, req.action, true));
    if (rule) await new Promise((r) => setTimeout(r, rule.ms + Math.random() * (rule.jitterMs ?? 0)));
    return drops !== since;
  }

  /** Counts a write of the request's access key; returns the crash point armed for it, if any (disarmed). */
  function crashPointFor(req: AwsRequest): CrashPoint | undefined {
    if (!isWriteRequest(req)) return undefined;
    const key = req.accessKeyId ?? "";
    const list = (stats.writes[key] ??= []);
    list.push(req.action);
    const i = crashArmed.findIndex((c) => c.accessKeyId === key && c.atWrite === list.length);
    if (i < 0) return undefined;
    const [point] = crashArmed.splice(i, 1);
    return point;
  }

  async function crash(point: CrashPoint, req: AwsRequest, forwardedStatus?: number): Promise<typeof DROPPED> {
    crashFired.push({ ...point, action: req.action, ...(forwardedStatus !== undefined ? { forwardedStatus } : {}), at: new Date().toISOString() });
    log(`crash point: SIGKILL pid ${point.pid} ${point.mode} write ${point.atWrite} (${req.action}) of ${point.accessKeyId}`);
    await killAndWait(point.pid);
    return DROPPED;
  }

  async function handleAws(req: AwsRequest): Promise<HttpAnswer | typeof DROPPED> {
    bump(stats.calls, req.action);
    const fault = injectedFault(req) ?? rateLimited(req);
    if (fault) return fault;
    if (config.iam.enforce) {
      const denied = await authorize(req);
      if (denied) return denied;
    }
    if (await serviceTime(req)) return DROPPED;
    // A write that gets this far is one AWS would carry out: counted, and maybe a crash point.
    const point = crashPointFor(req);
    if (point?.mode === "before") return crash(point, req);
    await saveBeforeChange(req);
    let ans: HttpAnswer;
    if (req.service === "ec2" && req.operation === "RunInstances") ans = await runInstances(req);
    else if (req.service === "ec2" && req.operation === "DescribeInstances") ans = await describeInstances(req);
    else if (req.service === "ec2" && req.operation === "TerminateInstances") ans = await terminateInstances(req);
    else ans = await forward(req.method, req.url, req.headers, req.body);
    if (config.iam.enforce && req.service === "s3" && ans.status === 404 && (req.operation === "GetObject" || req.operation === "HeadObject")) {
      ans = await missingObjectAnswer(req, ans);
    }
    try {
      learnFromAnswer(req, ans);
    } catch (err) {
      log(`could not read the answer to ${req.action}: ${(err as Error).message}`);
    }
    if (point?.mode === "after") return crash(point, req, ans.status);
    return ans;
  }

  function json(res: ServerResponse, status: number, value: unknown): void {
    const body = Buffer.from(JSON.stringify(value));
    res.writeHead(status, { "content-type": "application/json", "content-length": body.length });
    res.end(body);
  }

  async function handleControl(method: string, path: string, body: Buffer, res: ServerResponse): Promise<void> {
    const sub = path.slice(CONTROL_PREFIX.length);
    if (sub === "/config" && method === "GET") return json(res, 200, config);
    if (sub === "/config" && (method === "PUT" || method === "PATCH" || method === "POST")) {
      config = applyPatch(config, JSON.parse(body.toString("utf8") || "{}") as StrictAwsConfigPatch);
      shrinkShuttingDown();
      // A hold no rule names any more lets its requests go on.
      for (const h of [...heldNow]) if (!config.holds.some((r) => globMatch(r.action, h.action, true))) h.end(false);
      return json(res, 200, config);
    }
    if (sub === "/reset" && method === "POST") {
      config = defaultConfig();
      shrinkShuttingDown();
      crashArmed = [];
      releaseHolds(true);
      return json(res, 200, config);
    }
    if (sub === "/holds/release" && method === "POST") return json(res, 200, { released: releaseHolds() });
    if (sub === "/crash" && method === "GET") return json(res, 200, { armed: crashArmed, fired: crashFired });
    if (sub === "/crash" && method === "POST") {
      const p = JSON.parse(body.toString("utf8") || "{}") as Partial<CrashPoint>;
      if (typeof p.accessKeyId !== "string" || !Number.isInteger(p.pid) || !Number.isInteger(p.atWrite) || (p.atWrite ?? 0) < 1 || (p.mode !== "before" && p.mode !== "after")) {
        return json(res, 400, { message: "a crash point needs accessKeyId, pid, atWrite >= 1 and mode before|after" });
      }
      const point: CrashPoint = { accessKeyId: p.accessKeyId, pid: p.pid as number, atWrite: p.atWrite as number, mode: p.mode };
      crashArmed = crashArmed.filter((c) => !(c.accessKeyId === point.accessKeyId && c.atWrite === point.atWrite));
      crashArmed.push(point);
      return json(res, 200, { armed: crashArmed, fired: crashFired });
    }
    if (sub === "/stats" && method === "GET") return json(res, 200, { ...stats, holding: holdingNow() });
    if (sub === "/stats/reset" && method === "POST") {
      stats = emptyStats();
      return json(res, 200, { ...stats, holding: holdingNow() });
    }
    return json(res, 404, { message: `no such control endpoint: ${method} ${path}` });
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? "GET";
    const url = req.url ?? "/";
    const body = await readBody(req);
    const path = url.split("?")[0]!;
    if (path.startsWith(CONTROL_PREFIX)) return handleControl(method, path, body, res);
    let ans: HttpAnswer;
    const aws = path.startsWith("/moto-api/") ? undefined : describeRequest(method, url, req.headers, body);
    if (aws) {
      const answer = await handleAws(aws);
      if (answer === DROPPED) {
        // The caller is dead, or its call was dropped: nothing is answered (as if the connection broke mid-request).
        res.socket?.destroy();
        return;
      }
      ans = answer;
    } else {
      if (path === "/moto-api/reset" && method === "POST") resetState();
      ans = await forward(method, url, req.headers, body);
    }
    const length = method === "HEAD" && ans.headers["content-length"] !== undefined ? ans.headers["content-length"] : String(ans.body.length);
    res.writeHead(ans.status, { ...ans.headers, "content-length": length });
    res.end(method === "HEAD" ? undefined : ans.body);
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      log(`request failed in the layer: ${(err as Error).stack ?? String(err)}`);
      if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
      res.end(`strict AWS layer: ${(err as Error).message}`);
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const endpoint = `http://127.0.0.1:${port}`;
  log(`strict AWS layer on ${endpoint} in front of ${opts.upstream}`);

  let stopped: Promise<void> | undefined;
  return {
    endpoint,
    upstream: opts.upstream,
    stop: () => {
      stopped ??= new Promise<void>((resolve) => {
        releaseHolds(true);
        server.close(() => resolve());
        server.closeAllConnections();
        agent.destroy();
      });
      return stopped;
    },
  };
}
