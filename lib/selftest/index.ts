// kvm-gmem/selftest: write KVM selftests in TypeScript that print the
// kernel's KTAP and exit with kselftest's statuses. One harness per process:
//
//   import { Kvm, raw } from 'kvm-gmem';
//   import { test, requires, assertErrno } from 'kvm-gmem/selftest';
//   requires('GUEST_MEMFD');                  // else `1..0 # SKIP ...`, exit 4
//   test('size 1 is EINVAL', () => { ... });
//
// Every export is named here and listed by test/exports.test.ts.
import { KvmError } from '../errors.js';
import { Kvm } from '../kvm/kvm.js';
import { current } from './collect.js';
import { type HarnessOptions, type TestOptions } from './harness.js';
import { type Need } from './requirements.js';

export { Harness, KSFT_FAIL, KSFT_PASS, KSFT_SKIP, SelftestSkip, SelftestUsageError, type HarnessOptions, type TestOptions } from './harness.js';
export { assert, assertEq, assertErrno, assertNe, assertThrows, SelftestAssertionError } from './assert.js';
export type { Need } from './requirements.js';

/** Registers a test; the tests run in order once the file has loaded. */
export function test(name: string, fn: () => unknown, options?: TestOptions): void {
  current().test(name, fn, options);
}

/** Ends the current test as skipped; outside a test, skips the whole file (`1..0 # SKIP reason`, exit 4). */
export function skip(reason: string): never {
  return current().skip(reason);
}

/**
 * TEST_REQUIRE: each requirement in `kvm-gmem probe --require` grammar
 * ('GUEST_MEMFD', 'vm-type:sw-protected', 'sw-protected:attr:private',
 * 'gmem-flag:mmap', ...) or `{ reason, met }`. Unmet: skips the test, or the
 * whole file when called at the top level.
 */
export function requires(...needs: Need[]): void {
  current().requires(...needs);
}

/**
 * The kernel selftest library's open of /dev/kvm (`_open_kvm_dev_path_or_exit()`):
 * Kvm.open(path); a missing device (ENOENT) skips, the whole file when
 * called at the top level ("Cannot open /dev/kvm: ..."); any other error
 * is thrown, a failure.
 */
export function openKvm(path = '/dev/kvm'): Kvm {
  try {
    return Kvm.open(path);
  } catch (e) {
    if (e instanceof KvmError && e.code === 'ENOENT') current().skip(`Cannot open ${path}: ${e.message}`);
    throw e;
  }
}

/** Prints `# ...` diagnostic lines (pr_info). */
export function diag(...parts: unknown[]): void {
  current().diag(...parts);
}

/** Default per-test timeout and the file's timeout, in ms (before the run starts). */
export function configure(options: HarnessOptions): void {
  current().configure(options);
}

/** Runs the tests now (for a file that awaits at its top level); otherwise they run by themselves. */
export function run(): Promise<never> {
  return current().run();
}
