/**
 * Time for durations and deadlines inside this process: a monotonic clock, in milliseconds from an
 * arbitrary origin. A step of the wall clock (an NTP correction, a machine resumed from sleep, an
 * administrator's `date -s`) does not move it, so a deadline measured with it is neither cut short
 * nor stretched, and a rate limiter never waits for the wall clock to catch up with itself.
 *
 * The wall clock (Date.now) stays for what is written down or compared with other machines: an
 * Event's time, a Lease's renewTime, a time kept in a status.
 *
 * Read through a function call each time (not a bound reference), so fake timers that replace
 * `performance` in tests apply.
 */
export const monotonicNow = (): number => performance.now();
