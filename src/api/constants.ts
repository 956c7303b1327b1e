/**
 * Names and defaults shared by the API schemas, the generated CRDs, the controllers and the cloud
 * providers. Values that come from the product documents (shared/seeds) say so.
 */

/** API group of every vmforge custom resource. */
export const GROUP = "vmforge.dev";
/** The one served and stored version. */
export const VERSION = "v1alpha1";
/** `apiVersion` field value of vmforge objects. */
export const API_VERSION = `${GROUP}/${VERSION}`;

/** The AWS regions the AWS Cloud compute environment supports (seed 002, "Supported regions"). */
export const SUPPORTED_AWS_REGIONS = [
  "af-south-1",
  "ap-east-1",
  "ap-northeast-1",
  "ap-northeast-2",
  "ap-northeast-3",
  "ap-south-1",
  "ap-southeast-1",
  "ap-southeast-2",
  "ap-southeast-3",
  "ca-central-1",
  "eu-central-1",
  "eu-north-1",
  "eu-south-1",
  "eu-west-1",
  "eu-west-2",
  "eu-west-3",
  "me-south-1",
  "sa-east-1",
  "us-east-1",
  "us-east-2",
  "us-west-1",
  "us-west-2",
] as const;
export type AwsRegion = (typeof SUPPORTED_AWS_REGIONS)[number];

export function isSupportedAwsRegion(region: string): region is AwsRegion {
  return (SUPPORTED_AWS_REGIONS as readonly string[]).includes(region);
}

/** Boot disk size when neither the CE nor the Run sets one (seed 002: "a default 50 GB gp3 volume"). */
export const DEFAULT_BOOT_DISK_GIB = 50;
/** EBS volume type of the boot disk (seed 002). */
export const DEFAULT_BOOT_DISK_VOLUME_TYPE = "gp3";
/** Smallest and largest boot disk accepted (gp3 limits: 1 GiB..16 TiB; below 8 GiB no AMI boots). */
export const MIN_BOOT_DISK_GIB = 8;
export const MAX_BOOT_DISK_GIB = 16384;
/** Azure VM size when `spec.azure.vmSize` is unset. */
export const DEFAULT_AZURE_VM_SIZE = "Standard_D2ds_v4";
/** x86_64 instance type the operator picks when `spec.aws.instanceType` is unset. */
export const DEFAULT_AWS_INSTANCE_TYPE = "m6i.large";
/** arm64 (Graviton) instance type the operator picks when `graviton` is true and no type is set. */
export const DEFAULT_AWS_GRAVITON_INSTANCE_TYPE = "m7g.large";
/** Key in the platform token Secret when `platformTokenSecretRef.key` is unset. */
export const DEFAULT_PLATFORM_TOKEN_KEY = "token";
/** Largest pre-/post-run script, in bytes (1 KiB). */
export const MAX_SCRIPT_BYTES = 1024;

/** Finalizer the operator puts on ComputeEnvironments and Runs before its first external write. */
export const FINALIZER = "vmforge.dev/finalizer";

/**
 * Set (to any new value, e.g. the time) to make a Stalled ComputeEnvironment try again at once
 * after a fix made outside Kubernetes (a role granted in the cloud), as Flux's
 * reconcile.fluxcd.io/requestedAt does. Without it the operator re-checks a stalled one slowly.
 */
export const ANNOTATION_RECONCILE_REQUESTED = "vmforge.dev/reconcile-requested-at";
/**
 * Set by the operator on a Run, with its finalizer and in the same write, when it decides to launch
 * the Run's machine; the value is the Run's UID, so a copy of the object (a new UID) does not carry
 * a decision over. Until the machine is recorded in status, it is what tells a restarted operator
 * that a launch may be in flight (see launchDecided).
 */
export const ANNOTATION_LAUNCH_DECIDED = "vmforge.dev/launch-decided";
/**
 * Set by the operator on a Run in the same write as its launch decision: the UID of the
 * ComputeEnvironment the machine is launched under. A CE removed by force and created again under
 * the same name is another CE (another UID, maybe another account or region): the Run's machine
 * stays with the one that launched it.
 */
export const ANNOTATION_LAUNCHED_UNDER = "vmforge.dev/compute-environment-uid";
/** Label on a Run naming its ComputeEnvironment (set by the operator, used as a label selector). */
export const LABEL_COMPUTE_ENVIRONMENT = "vmforge.dev/compute-environment";
/** Label put on every object the operator creates in Kubernetes. */
export const LABEL_MANAGED_BY = "app.kubernetes.io/managed-by";
export const MANAGED_BY_VALUE = "vmforge";
/** Label on the CRDs themselves. */
export const LABEL_PART_OF = "app.kubernetes.io/part-of";
export const PART_OF_VALUE = "vmforge";

/** Condition types (kstatus: Ready, Reconciling, Stalled) plus vmforge detail types. */
export const CONDITION_READY = "Ready";
export const CONDITION_RECONCILING = "Reconciling";
export const CONDITION_STALLED = "Stalled";
export const CONDITION_CREDENTIALS_VALID = "CredentialsValid";
export const CONDITION_VALIDATED = "Validated";

export const COMPUTE_ENVIRONMENT_PHASES = ["Pending", "Provisioning", "Ready", "Failed", "Deleting"] as const;
export type ComputeEnvironmentPhase = (typeof COMPUTE_ENVIRONMENT_PHASES)[number];

export const RUN_PHASES = ["Pending", "Launching", "Running", "Succeeded", "Failed", "Cancelled"] as const;
export type RunPhase = (typeof RUN_PHASES)[number];
/** Phases a Run never leaves. */
export const TERMINAL_RUN_PHASES: readonly RunPhase[] = ["Succeeded", "Failed", "Cancelled"];

export function isTerminalRunPhase(phase: string | undefined): boolean {
  return phase !== undefined && (TERMINAL_RUN_PHASES as readonly string[]).includes(phase);
}

/** Days a CE keeps its Runs' logs when spec.logRetentionDays is unset (CloudWatch and Log Analytics both accept it). */
export const DEFAULT_LOG_RETENTION_DAYS = 30;
/** The retention periods CloudWatch Logs accepts (PutRetentionPolicy), in days. */
export const CLOUDWATCH_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653] as const;
/** Interactive (Analytics plan) retention of a Log Analytics table: 4 to 730 days. */
export const MIN_LOG_ANALYTICS_RETENTION_DAYS = 4;
export const MAX_LOG_ANALYTICS_RETENTION_DAYS = 730;
