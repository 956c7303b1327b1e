/**
 * Turns a CE's resolved credentials into an AWS SDK credential provider.
 *
 * Secret keys (all strings):
 *   accessKeyId, secretAccessKey   required for source "secret"
 *   sessionToken                   optional (temporary keys)
 *   roleArn, externalId            optional: assume this role with the keys above (STS AssumeRole)
 * Source "ambient" uses the SDK's default chain (environment, web identity / IRSA, EKS pod
 * identity, container and instance metadata); it is chosen by leaving out the Secret. A Secret
 * with `roleArn` but no keys is rejected. Ambient credentials may carry `roleArn` (+ `externalId`)
 * too: the CE's spec.aws.roleArn, which the AWS provider puts there; that role is then assumed
 * with the ambient identity, the same way a Secret's role is assumed with the Secret's keys.
 *
 * Values never appear in errors or logs; messages name the Secret and the key only.
 */
import { createHash } from "node:crypto";
import { fromNodeProviderChain, fromTemporaryCredentials } from "@aws-sdk/credential-providers";
import type { EC2ClientConfig } from "@aws-sdk/client-ec2";
import { CloudError, type ResolvedCredentials } from "../provider.js";

export const SECRET_KEY_ACCESS_KEY_ID = "accessKeyId";
export const SECRET_KEY_SECRET_ACCESS_KEY = "secretAccessKey";
export const SECRET_KEY_SESSION_TOKEN = "sessionToken";
export const SECRET_KEY_ROLE_ARN = "roleArn";
export const SECRET_KEY_EXTERNAL_ID = "externalId";

/** Session name used when assuming `roleArn` (shows up in CloudTrail). */
export const ASSUME_ROLE_SESSION_NAME = "vmforge-operator";

/** What SDK clients accept as `credentials` (static keys or a provider function). */
export type AwsCredentialsConfig = NonNullable<EC2ClientConfig["credentials"]>;
type StaticKeys = { accessKeyId: string; secretAccessKey: string; sessionToken?: string };

const ROLE_ARN_RE = /^arn:aws[a-z-]*:iam::\d{12}:role\/[\w+=,.@/-]{1,512}$/;

export interface CredentialOptions {
  region: string;
  /** Endpoint override (moto); also used for the STS client that assumes `roleArn`. */
  endpoint?: string;
  /** "namespace/name" of the Secret, for messages. */
  secretLabel?: string;
}

/** The parsed, checked view of a credentials Secret. */
export interface SecretCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  roleArn?: string;
  externalId?: string;
}

function label(creds: ResolvedCredentials, opts: { secretLabel?: string }): string {
  return opts.secretLabel ?? creds.secretName ?? "(unnamed)";
}

/** Reads and checks the Secret's keys; throws Terminal InvalidCredentials naming the Secret and key. */
export function parseSecretCredentials(creds: ResolvedCredentials, opts: { secretLabel?: string } = {}): SecretCredentials {
  const where = label(creds, opts);
  const get = (key: string): string | undefined => {
    const v = creds.data[key];
    return typeof v === "string" && v.trim() !== "" ? v.trim() : undefined;
  };
  const accessKeyId = get(SECRET_KEY_ACCESS_KEY_ID);
  const secretAccessKey = get(SECRET_KEY_SECRET_ACCESS_KEY);
  const missing = (key: string): CloudError =>
    CloudError.terminal("InvalidCredentials", `Secret ${where} has no key "${key}" (or it is empty)`);
  if (accessKeyId === undefined) throw missing(SECRET_KEY_ACCESS_KEY_ID);
  if (secretAccessKey === undefined) throw missing(SECRET_KEY_SECRET_ACCESS_KEY);
  const out: SecretCredentials = { accessKeyId, secretAccessKey };
  const sessionToken = get(SECRET_KEY_SESSION_TOKEN);
  if (sessionToken !== undefined) out.sessionToken = sessionToken;
  const roleArn = get(SECRET_KEY_ROLE_ARN);
  if (roleArn !== undefined) {
    if (!ROLE_ARN_RE.test(roleArn)) {
      throw CloudError.terminal(
        "InvalidCredentials",
        `Secret ${where} key "${SECRET_KEY_ROLE_ARN}" is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)`,
      );
    }
    out.roleArn = roleArn;
  }
  const externalId = get(SECRET_KEY_EXTERNAL_ID);
  if (externalId !== undefined) {
    if (roleArn === undefined) {
      throw CloudError.terminal(
        "InvalidCredentials",
        `Secret ${where} has key "${SECRET_KEY_EXTERNAL_ID}" but no "${SECRET_KEY_ROLE_ARN}" to use it with`,
      );
    }
    out.externalId = externalId;
  }
  return out;
}

/**
 * The SDK credential provider for these credentials. Throws Terminal InvalidCredentials when the
 * Secret lacks a key; failures to obtain credentials later (assume role denied, no ambient
 * identity) surface from the first SDK call and are mapped by `mapAwsError`.
 */
export function credentialProvider(
  creds: ResolvedCredentials,
  opts: CredentialOptions,
): AwsCredentialsConfig {
  if (creds.source === "ambient") {
    const chain = fromNodeProviderChain({ clientConfig: { region: opts.region } });
    const roleArn = creds.data[SECRET_KEY_ROLE_ARN];
    if (!roleArn) return chain;
    if (!ROLE_ARN_RE.test(roleArn)) {
      throw CloudError.terminal("InvalidSpec", "spec.aws.roleArn is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)");
    }
    return assumeRole(chain, roleArn, creds.data[SECRET_KEY_EXTERNAL_ID], opts);
  }
  const s = parseSecretCredentials(creds, opts);
  const base: StaticKeys = {
    accessKeyId: s.accessKeyId,
    secretAccessKey: s.secretAccessKey,
    ...(s.sessionToken !== undefined ? { sessionToken: s.sessionToken } : {}),
  };
  if (s.roleArn === undefined) return base;
  return assumeRole(base, s.roleArn, s.externalId, opts);
}

/** STS AssumeRole of `roleArn` (with `externalId`) on top of `master`, refreshed before expiry by the SDK. */
function assumeRole(master: AwsCredentialsConfig, roleArn: string, externalId: string | undefined, opts: CredentialOptions): AwsCredentialsConfig {
  return fromTemporaryCredentials({
    masterCredentials: master,
    params: {
      RoleArn: roleArn,
      RoleSessionName: ASSUME_ROLE_SESSION_NAME,
      ...(externalId ? { ExternalId: externalId } : {}),
    },
    clientConfig: {
      region: opts.region,
      ...(opts.endpoint !== undefined ? { endpoint: opts.endpoint } : {}),
    },
  });
}

/**
 * A stable fingerprint of credentials (sha256 over source and sorted key/value pairs), used as a
 * cache key so a rotated Secret gets new clients. Never reversible to the values in practice and
 * never logged.
 */
export function credentialsFingerprint(creds: ResolvedCredentials): string {
  const h = createHash("sha256");
  h.update(creds.source);
  for (const k of Object.keys(creds.data).sort()) {
    h.update("\0");
    h.update(k);
    h.update("\0");
    h.update(creds.data[k] ?? "");
  }
  return h.digest("hex");
}
