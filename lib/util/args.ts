// Input normalisation for the public API: every address, size and offset is
// accepted as a number or a bigint and checked to be a non-negative integer
// below 2^64, so later arithmetic (wrap checks) can be exact in bigint.

export type U64Input = number | bigint;

export function toU64(v: unknown, name: string): bigint {
  if (typeof v === 'bigint') {
    if (v >= 0n && v < 1n << 64n) return v;
  } else if (typeof v === 'number') {
    if (Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  }
  throw new TypeError(`${name} must be a non-negative integer (number or bigint) below 2^64, got ${String(v)}`);
}

export function toU32(v: unknown, name: string): number {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff) return v;
  throw new TypeError(`${name} must be an integer 0..2^32-1, got ${String(v)}`);
}

/** A bigint known to be below 2^53, as a number. */
export function small(v: bigint): number {
  return Number(v);
}

/** A number toU64() accepts as it is: a safe integer >= 0 (no bigint needed). */
export function isSafeUint(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/**
 * A non-empty, page-aligned [start, start + length) given as numbers that
 * ends by `end` (at most 2^53 - 1): the common case, which the hot paths
 * check in numbers; anything else takes their exact bigint path, which
 * names the rule it breaks.
 */
export function isPageRange(start: unknown, length: unknown, end = Number.MAX_SAFE_INTEGER): boolean {
  return isSafeUint(start) && isSafeUint(length) && length > 0 && start % 4096 === 0 && length % 4096 === 0 && start + length <= end;
}
