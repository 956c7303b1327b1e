/**
 * Time for durations and deadlines inside this process: a monotonic clock (performance.now, on
 * CLOCK_MONOTONIC), in milliseconds with fractions from an arbitrary origin. A step of the wall
 * clock (an NTP correction, an administrator's `date -s`) does not move it, so a deadline measured
 * with it is neither cut short nor stretched by one, and a rate limiter never waits for the wall
 * clock to catch up with itself. It stands still while the machine is suspended: what must count
 * the time asleep as well (a leader's renew deadline) also reads the wall clock. APIs that take
 * whole milliseconds (AbortSignal.timeout) need its durations rounded.
 *
 * The wall clock (Date.now) stays for what is written down or compared with other machines: an
 * Event's time, a Lease's renewTime, a time kept in a status.
 *
 * Read through a function call each time (not a bound reference), so fake timers that replace
 * `performance` in tests apply.
 */
export const monotonicNow = (): number => performance.now();
