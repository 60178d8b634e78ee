// Assertions for selftests written with kvm-gmem/selftest: each failure
// throws SelftestAssertionError carrying what was expected and what came,
// which the harness prints as KTAP diagnostics ('# ' lines) with the place
// of the failing call, as the kernel's TEST_ASSERT prints file:line. Kernel
// errors keep their request and errno (KvmError's message shows both).
import { inspect, isDeepStrictEqual } from 'node:util';
import { KvmError, KvmGmemError } from '../errors.js';

/** A failed assertion: `expected` and `actual` as given, `message` the caller's words and the comparison. */
export class SelftestAssertionError extends KvmGmemError {
  override name = 'SelftestAssertionError';
  readonly code = 'ERR_KVM_SELFTEST_ASSERTION';
  constructor(
    message: string,
    readonly expected: unknown,
    readonly actual: unknown,
    /** Extra lines for the diagnostics (e.g. the kernel error's request). */
    readonly details: readonly string[] = [],
  ) {
    super(message);
  }
}

const show = (v: unknown): string => inspect(v, { depth: 4, breakLength: Infinity, maxArrayLength: 16, maxStringLength: 200 });
const what = (message: string | undefined, fallback: string): string => (message === undefined ? fallback : `${message}: ${fallback}`);

/** Fails unless `cond` is truthy (TEST_ASSERT). */
export function assert(cond: unknown, message: string): asserts cond {
  if (!cond) throw new SelftestAssertionError(message, true, cond);
}

/** Fails unless `actual` deep-equals `expected` (TEST_ASSERT_EQ); bigint and number differ. */
export function assertEq<T>(actual: unknown, expected: T, message?: string): asserts actual is T {
  if (!isDeepStrictEqual(actual, expected))
    throw new SelftestAssertionError(what(message, `expected ${show(expected)}, got ${show(actual)}`), expected, actual);
}

/** Fails if `actual` deep-equals `unexpected` (TEST_ASSERT_NE). */
export function assertNe(actual: unknown, unexpected: unknown, message?: string): void {
  if (isDeepStrictEqual(actual, unexpected))
    throw new SelftestAssertionError(what(message, `expected anything but ${show(unexpected)}`), { not: unexpected }, actual);
}

function outcome(e: unknown): string {
  if (e instanceof Error) return `${e.name}${'code' in e && typeof e.code === 'string' ? ` ${e.code}` : ''}: ${e.message.split('\n')[0] ?? ''}`;
  return `a thrown ${show(e)}`;
}

/**
 * Runs `fn`, which must fail in the kernel with errno `code` ('EINVAL'):
 * a KvmError (from raw.* or the checked layer's kernel call). Returns it.
 * A success, another errno or another error fails the test, naming what came.
 */
export function assertErrno(fn: () => unknown, code: string, message?: string): KvmError {
  let result: unknown;
  try {
    result = fn();
  } catch (e) {
    if (e instanceof KvmError && e.code === code) return e;
    const details = e instanceof KvmError ? e.message.split('\n') : e instanceof Error && e.stack ? [e.stack.split('\n')[1]?.trim() ?? ''] : [];
    throw new SelftestAssertionError(
      what(message, `expected the kernel to fail with ${code}, got ${outcome(e)}`),
      code,
      e instanceof KvmError ? e.code : e,
      details,
    );
  }
  throw new SelftestAssertionError(what(message, `expected the kernel to fail with ${code}, but the call succeeded (returned ${show(result)})`), code, result);
}

type Class<E> = abstract new (...args: never[]) => E;

/** Runs `fn`, which must throw an instance of `cls` (with `code`, if given). Returns the error. */
export function assertThrows<E extends Error>(fn: () => unknown, cls: Class<E>, code?: string, message?: string): E {
  let result: unknown;
  try {
    result = fn();
  } catch (e) {
    if (e instanceof cls && (code === undefined || (e as { code?: unknown }).code === code)) return e;
    throw new SelftestAssertionError(what(message, `expected ${cls.name}${code ? ` ${code}` : ''}, got ${outcome(e)}`), cls.name, e);
  }
  throw new SelftestAssertionError(what(message, `expected ${cls.name}${code ? ` ${code}` : ''}, but the call returned ${show(result)}`), cls.name, result);
}
