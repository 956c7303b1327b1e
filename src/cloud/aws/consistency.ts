/**
 * How long EC2's eventual consistency can hide a new instance, as numbers the operator plans with.
 * No SDK import here: the operator reads these before the AWS provider is loaded.
 */

/** How long after a launch EC2 may answer "not found" for the new instance's ID. */
export const RECENT_LAUNCH_MS = 5 * 60_000;

/**
 * How long after a launch a DescribeInstances filtered by the Run's tag may still not list the new
 * instance. A Run whose launch was decided but whose machine was never recorded counts as having
 * none only once a look-up made this long after the decision found nothing.
 */
export const UNLISTED_LAUNCH_MS = 2 * 60_000;
