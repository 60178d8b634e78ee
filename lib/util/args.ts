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
