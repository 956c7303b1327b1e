// The behaviours of the strict AWS layer (test/harness/aws-strict/server.ts) and their defaults.
// Shared by the server and its typed client; JSON on the wire.

export type FaultKind = "throttle" | "unavailable" | "internal" | "denied" | "refuse";

export interface FaultRule {
  /** IAM action pattern the rule applies to: "ec2:RunInstances", "ec2:Describe*", "*" (default). */
  action?: string;
  /**
   * throttle: RequestLimitExceeded (EC2), Throttling (IAM, STS), ThrottlingException (Logs),
   * SlowDown (S3); unavailable: HTTP 503; internal: HTTP 500; denied: the service's access-denied
   * answer (UnauthorizedOperation on EC2, AccessDenied on IAM, STS and S3, AccessDeniedException
   * on Logs), as when a policy or an SCP changes under the operator; refuse: `code` with `status`
   * (default 400) and `message`, any refusal the service gives (e.g. InvalidParameterCombination).
   */
  error: FaultKind;
  /** For refuse: the error code (required). */
  code?: string;
  /** For refuse: the HTTP status (default 400). */
  status?: number;
  /** For refuse: the message (default: the code). */
  message?: string;
  /** Chance per matching request, 0..100 (default 100). */
  percent?: number;
  /** Fires this many times, then stays inert (default: no limit). Counts down as it fires. */
  count?: number;
}

/**
 * A request-rate quota, as AWS applies one per account and Region to an API action (e.g.
 * CloudWatch Logs' GetLogEvents, 25 per second): a token bucket per Region that refills at
 * `perSecond`; a request finding it empty is throttled (the answer of a "throttle" fault).
 */
export interface RateLimitRule {
  /** IAM action pattern, as for faults: "logs:GetLogEvents", "ec2:Describe*". */
  action: string;
  perSecond: number;
  /** Bucket size (default: perSecond, i.e. one second's worth). */
  burst?: number;
}

export interface CapacityRule {
  /** Availability Zone (of the request's subnet, or its Placement), or "*" for every zone. */
  availabilityZone: string;
  /** Instance type, or "*". */
  instanceType: string;
  /** Unsupported: the type is not offered in that zone. InsufficientInstanceCapacity: none free now. */
  error: "Unsupported" | "InsufficientInstanceCapacity";
  /** Answers this many launches, then stays inert (default: no limit). */
  count?: number;
}

export interface ConsistencyConfig {
  /** A new instance is left out of tag-filtered DescribeInstances answers for this long after RunInstances. */
  newInstanceHiddenMs: number;
  /** ... or for this many tag-filtered DescribeInstances answers that would have shown it. */
  newInstanceHiddenDescribes: number;
  /**
   * A new instance's ID is unknown to TerminateInstances and to DescribeInstances by ID for this
   * long after RunInstances (InvalidInstanceID.NotFound, as EC2 may answer right after a launch).
   */
  newInstanceUnknownByIdMs: number;
  /**
   * After a TerminateInstances through the layer, DescribeInstances shows the instance
   * `shutting-down` (code 32) for this long before `terminated`, as EC2 does (moto: terminated at
   * once). 0: off. Lowering it cuts the windows already given, for good; raising it does not
   * lengthen them. Answers filtered by `instance-state-name` drop it while shutting down unless the
   * filter names that state; a filter naming `shutting-down` but not `terminated` cannot show it
   * (moto leaves it out: not emulated), nor is an `instance-state-code` filter (or a wildcard in a
   * state filter) read. The TerminateInstances answer itself is moto's (or, for a protected
   * instance, the layer's: see protectionRefusal in server.ts).
   */
  shuttingDownMs: number;
  /**
   * A terminated instance is left out of every DescribeInstances answer this long after it ended
   * (after it stopped showing shutting-down) (null: never, as moto).
   */
  terminatedVisibleMs: number | null;
  /** RunInstances refuses an instance profile for this long after it was created or given its role. */
  newProfileRejectedMs: number;
  /** ... or for this many RunInstances calls that name it. */
  newProfileRejections: number;
}

export interface IamConfig {
  /**
   * Check every request as AWS does: signature against the secret key (keys are learnt from
   * CreateAccessKey and AssumeRole answers), then the caller's identity policies (read from moto)
   * for the action on the request's resource ARNs, plus iam:PassRole for RunInstances and
   * AddRoleToInstanceProfile and the role's trust policy for sts:AssumeRole.
   */
  enforce: boolean;
  /** Access key ids that act as the account's root user (allowed everything), e.g. "testing". */
  rootAccessKeys: string[];
  /**
   * IAM is eventually consistent: a change to users, groups, roles or policies takes this long to
   * count in access checks (a grant still denies, a revocation still allows, meanwhile), for
   * identities whose policies were already in use. 0: at once, as moto.
   */
  policyChangeDelayMs?: number;
}

/**
 * Time the service takes to carry out a request, which moto does in milliseconds: EC2's
 * RunInstances answers in one to a few seconds, TerminateInstances and IAM writes in hundreds of
 * milliseconds. The layer waits `ms` (plus up to `jitterMs`, at random) after the request passed
 * faults, rate limits and IAM, before carrying it out; the caller waits that long for its answer.
 */
export interface LatencyRule {
  /** IAM action pattern, as for faults. */
  action: string;
  ms: number;
  jitterMs?: number;
}

/**
 * Requests of the action are held where a latency rule waits, unanswered and not yet carried out,
 * until the hold is released (the control API's holds/release, or a configuration without the
 * rule), when they go on; a reset (of the layer or of moto) or the layer stopping drops them
 * without an answer, as a broken connection would. A call in flight for as long as a test needs.
 * `count`: only the next so many.
 */
export interface HoldRule {
  action: string;
  count?: number;
}

export interface StrictAwsConfig {
  /** RunInstances honours ClientToken: same token and parameters → the same answer; else IdempotentParameterMismatch. */
  idempotency: boolean;
  /**
   * RunInstances naming an instance profile that does not exist is refused as EC2 refuses it
   * (InvalidParameterValue, HTTP 400, "Invalid IAM Instance Profile ARN/name"), not with moto's
   * NoSuchEntity (HTTP 404).
   */
  ec2ProfileErrors: boolean;
  consistency: ConsistencyConfig;
  capacity: CapacityRule[];
  faults: FaultRule[];
  rateLimits: RateLimitRule[];
  latencies: LatencyRule[];
  holds: HoldRule[];
  iam: IamConfig;
}

/** A change to the configuration: top-level fields replace, consistency and iam merge field by field. */
export interface StrictAwsConfigPatch {
  idempotency?: boolean;
  ec2ProfileErrors?: boolean;
  consistency?: Partial<ConsistencyConfig>;
  capacity?: CapacityRule[];
  faults?: FaultRule[];
  rateLimits?: RateLimitRule[];
  latencies?: LatencyRule[];
  holds?: HoldRule[];
  iam?: Partial<IamConfig>;
}

export interface StrictAwsStats {
  /** Requests received per IAM action ("ec2:DescribeInstances"). */
  calls: Record<string, number>;
  /**
   * Per access key id, the writes (see isWriteAction) the layer passed on to moto or killed the
   * caller at, in order: what a crash point's `atWrite` counts.
   */
  writes: Record<string, string[]>;
  /** Injected faults per action. */
  faults: Record<string, number>;
  /** Requests throttled by a rate limit, per action. */
  throttled: Record<string, number>;
  /** Requests the layer refused (IAM, idempotency, capacity, consistency) per action. */
  refused: Record<string, number>;
  /** Requests held by a hold rule so far, per action (released or not). */
  held: Record<string, number>;
  /** Requests held now, waiting for a release, per action (counted when the stats are read). */
  holding: Record<string, number>;
}

/** Everything off: the layer answers as moto does. */
export function defaultConfig(): StrictAwsConfig {
  return {
    idempotency: false,
    ec2ProfileErrors: false,
    consistency: { newInstanceHiddenMs: 0, newInstanceHiddenDescribes: 0, newInstanceUnknownByIdMs: 0, shuttingDownMs: 0, terminatedVisibleMs: null, newProfileRejectedMs: 0, newProfileRejections: 0 },
    capacity: [],
    faults: [],
    rateLimits: [],
    latencies: [],
    holds: [],
    iam: { enforce: false, rootAccessKeys: [] },
  };
}

export function applyPatch(cfg: StrictAwsConfig, patch: StrictAwsConfigPatch): StrictAwsConfig {
  return {
    idempotency: patch.idempotency ?? cfg.idempotency,
    ec2ProfileErrors: patch.ec2ProfileErrors ?? cfg.ec2ProfileErrors,
    consistency: { ...cfg.consistency, ...patch.consistency },
    capacity: patch.capacity ? patch.capacity.map((r) => ({ ...r })) : cfg.capacity,
    faults: patch.faults ? patch.faults.map((r) => ({ ...r })) : cfg.faults,
    rateLimits: patch.rateLimits ? patch.rateLimits.map((r) => ({ ...r })) : cfg.rateLimits,
    latencies: patch.latencies ? patch.latencies.map((r) => ({ ...r })) : cfg.latencies,
    holds: patch.holds ? patch.holds.map((r) => ({ ...r })) : cfg.holds,
    iam: { ...cfg.iam, ...patch.iam },
  };
}

/**
 * A crash point: at the access key's write number `atWrite` (1 = its first write since the last
 * reset), the layer SIGKILLs the process `pid` (the operator), either before passing the write on
 * (the write never happens) or after moto carried it out, before the caller sees the answer (the
 * write happened, its answer is lost). Either way the request's connection is dropped. Fires once.
 */
export interface CrashPoint {
  accessKeyId: string;
  /** Process to kill (the operator process that signs with accessKeyId). */
  pid: number;
  atWrite: number;
  mode: "before" | "after";
}

/** A crash point that fired. */
export interface CrashRecord extends CrashPoint {
  /** The write's IAM action, e.g. "iam:CreateRole". */
  action: string;
  /** Whether moto carried the write out (mode "after") and its HTTP status then. */
  forwardedStatus?: number;
  at: string;
}

export interface CrashState {
  armed: CrashPoint[];
  fired: CrashRecord[];
}

/** Path prefix of the layer's control API (on the same port as the AWS endpoint). */
export const CONTROL_PREFIX = "/_vmforge/strict-aws";
