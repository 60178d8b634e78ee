import { defineConfig } from 'vitest/config';

// The test-VM tier (npm run test:vm): the files with private-memory tests,
// run inside a Linux 6.12 guest whose KVM offers KVM_X86_SW_PROTECTED_VM.
// There they must not skip: test/support/vm-skip-guard.ts fails the run if
// any private-memory test was skipped.
export default defineConfig({
  cacheDir: '/tmp/vitest-cache',
  test: {
    pool: 'forks',
    globalSetup: ['./test/support/vm-holder.ts'],
    include: [
      'test/private-memory.test.ts',
      'test/attributes.test.ts',
      'test/guest.test.ts',
      'test/vcpu.test.ts',
      'test/kvm.test.ts',
      'test/examples.test.ts',
      'test/memslot-differential.test.ts',
    ],
    testTimeout: 300_000,
    hookTimeout: 300_000,
    // TCG is slow and the VM has one CPU: run files one after another.
    fileParallelism: false,
    reporters: ['default', './test/support/vm-skip-guard.ts'],
  },
});
