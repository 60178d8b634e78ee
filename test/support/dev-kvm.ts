// Whether this process can use /dev/kvm, and which test files cannot run
// without it. On a host without a usable /dev/kvm (no KVM module bound, no
// nested virtualization, no permission) vitest.config.ts leaves these files
// out and test/dev-kvm.test.ts reports each one as a skipped test naming
// /dev/kvm and the reason, so the skip is visible; the same files then run
// against real kernels in the test-VM matrix (npm run test:vm).
import { closeSync, constants, openSync } from 'node:fs';

/** Test files (relative to the repository) that open /dev/kvm, at collection time or in most tests. */
export const NEEDS_DEV_KVM: readonly string[] = [
  'test/attributes.test.ts',
  'test/backing.test.ts',
  'test/cli.test.ts',
  'test/doc-examples.test.ts',
  'test/examples.test.ts',
  'test/fuzz.test.ts',
  'test/guest-helpers.test.ts',
  'test/guest-memfd.test.ts',
  'test/guest.test.ts',
  'test/kvm.test.ts',
  'test/memslot-differential.test.ts',
  'test/memslots.test.ts',
  'test/private-memory.test.ts',
  'test/reliability.test.ts',
  'test/robustness.test.ts',
  'test/rules-differential.test.ts',
  'test/selftests.test.ts',
  'test/vcpu.test.ts',
];

/** Why /dev/kvm cannot be used here ("ENOENT: no such file or directory"), or undefined when it can. */
export function devKvmProblem(path = '/dev/kvm'): string | undefined {
  try {
    closeSync(openSync(path, constants.O_RDWR));
    return undefined;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    return `${err.code ?? 'error'}: ${err.message.replace(/^[A-Z]+: /, '').replace(/, open '.*'$/, '')}`;
  }
}

export function devKvmUsable(): boolean {
  return devKvmProblem() === undefined;
}
