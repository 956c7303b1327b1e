/**
 * The duration syntax of `Run.spec.timeout`: a subset of Go's time.ParseDuration with whole numbers
 * of hours, minutes and seconds, in that order, each part optional but at least one present
 * ("90m", "6h", "1h30m", "45s", "2h0m10s"). The same grammar is enforced at admission by the CRD
 * (see DURATION_PATTERN), so a stored Run always parses.
 */

/** Each part has at most 6 digits so the value stays far below Go's int64 nanosecond limit. */
export const DURATION_PATTERN = "^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$";

const DURATION_RE = new RegExp(DURATION_PATTERN);

const MS_PER_SECOND = 1000;
const MS_PER_MINUTE = 60 * MS_PER_SECOND;
const MS_PER_HOUR = 60 * MS_PER_MINUTE;

/** Shortest timeout a Run may ask for. */
export const MIN_RUN_TIMEOUT = "1m";

/** Parses "90m" / "6h" / "1h30m10s" into milliseconds. Throws a RangeError naming the input when it is not valid. */
export function parseDuration(text: string): number {
  const m = text === "" ? null : DURATION_RE.exec(text);
  if (!m) {
    throw new RangeError(
      `invalid duration ${JSON.stringify(text)}: expected whole hours, minutes and seconds such as "90m", "6h" or "1h30m"`,
    );
  }
  const [, h, min, s] = m;
  return (
    (h ? Number.parseInt(h, 10) * MS_PER_HOUR : 0) +
    (min ? Number.parseInt(min, 10) * MS_PER_MINUTE : 0) +
    (s ? Number.parseInt(s, 10) * MS_PER_SECOND : 0)
  );
}

/** True when `text` is accepted by parseDuration. */
export function isDuration(text: string): boolean {
  return text !== "" && DURATION_RE.test(text);
}

/** Formats milliseconds (rounded down to whole seconds) in the same syntax, e.g. 5_400_000 -> "1h30m". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`cannot format duration ${ms}`);
  let rest = Math.floor(ms / MS_PER_SECOND);
  const h = Math.floor(rest / 3600);
  rest -= h * 3600;
  const m = Math.floor(rest / 60);
  const s = rest - m * 60;
  let out = "";
  if (h > 0) out += `${h}h`;
  if (m > 0) out += `${m}m`;
  if (s > 0 || out === "") out += `${s}s`;
  return out;
}
