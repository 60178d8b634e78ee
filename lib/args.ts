// Input normalisation for the public API: every address, size and offset is
// accepted as a number or a bigint and checked to be a non-negative integer
// below 2^64, so later arithmetic (wrap checks) can be exact in bigint.

/** An address, size or offset: a number (a safe integer) or a bigint, 0..2^64-1. */
export type U64Input = number | bigint;

/** The codes Node gives its own argument errors. */
export type ArgErrorCode = 'ERR_INVALID_ARG_TYPE' | 'ERR_INVALID_ARG_VALUE' | 'ERR_OUT_OF_RANGE';

/**
 * A TypeError for a bad argument, with the `code` Node would give it:
 * ERR_INVALID_ARG_TYPE when the value has the wrong type, else
 * ERR_INVALID_ARG_VALUE.
 */
export function argError(message: string, code: ArgErrorCode = 'ERR_INVALID_ARG_VALUE'): TypeError & { code: ArgErrorCode } {
  return Object.assign(new TypeError(message), { code });
}

/** argError's code for a value `v` that should have been of `expected` type(s). */
export function typeCode(v: unknown, ...expected: ('number' | 'bigint' | 'string' | 'object' | 'boolean' | 'function')[]): ArgErrorCode {
  const t = v === null ? 'null' : typeof v;
  return (expected as string[]).includes(t) ? 'ERR_INVALID_ARG_VALUE' : 'ERR_INVALID_ARG_TYPE';
}

/** A RangeError (code ERR_OUT_OF_RANGE) for a value of the right type outside what is allowed. */
export function rangeError(message: string): RangeError & { code: 'ERR_OUT_OF_RANGE' } {
  return Object.assign(new RangeError(message), { code: 'ERR_OUT_OF_RANGE' as const });
}

/**
 * A deadline option (`timeoutMs`) of a run, read once: -1 for none (absent
 * or 0), else milliseconds 1..2^31-1 (the native runners' convention; their
 * 0, "at once", is not offered). Vcpu.run, Vcpu.runSync and
 * Guest.runUntilDone all read it here.
 */
export function readTimeoutMs(v: unknown, op: string): number {
  if (v === undefined || v === 0) return -1;
  if (typeof v === 'number' && Number.isInteger(v) && v > 0 && v <= 0x7fffffff) return v;
  throw argError(`${op}: timeoutMs must be an integer 0..2^31-1 (0: no deadline), got ${String(v)}`, typeCode(v, 'number'));
}

export function toU64(v: unknown, name: string): bigint {
  if (typeof v === 'bigint') {
    if (v >= 0n && v < 1n << 64n) return v;
  } else if (typeof v === 'number') {
    if (Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  }
  throw argError(`${name} must be a non-negative integer (number or bigint) below 2^64, got ${String(v)}`, typeCode(v, 'number', 'bigint'));
}

export function toU32(v: unknown, name: string): number {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff) return v;
  throw argError(`${name} must be an integer 0..2^32-1, got ${String(v)}`, typeCode(v, 'number'));
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

/** A copy of a node-number array (read once: the native layer gets a plain array). */
export function nodeList(nodes: unknown, op: string): number[] {
  if (!Array.isArray(nodes)) throw argError(`${op}: nodes must be an array of node numbers`, 'ERR_INVALID_ARG_TYPE');
  return Array.from(nodes as unknown[], (v) => {
    if (typeof v !== 'number') throw argError(`${op}: nodes must be an array of node numbers`, typeCode(v, 'number'));
    return v;
  });
}
