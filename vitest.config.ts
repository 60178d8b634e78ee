import { configDefaults, defineConfig } from 'vitest/config';
import { devKvmProblem, NEEDS_DEV_KVM } from './test/support/dev-kvm.js';

// Without a usable /dev/kvm (a host whose KVM is absent or not ours) the
// files that need it are left out; test/dev-kvm.test.ts reports each as a
// skipped test that names /dev/kvm and why. The test-VM matrix runs them all.
const noKvm = devKvmProblem() !== undefined;

// Native-addon tests run in forked processes: a crash or a leaked fd stays in
// its own process, and KVM refuses VM ioctls from any process but the VM's
// creator, so tests must never share a VM across processes.
export default defineConfig({
  test: {
    pool: 'forks',
    include: ['test/**/*.test.ts'],
    exclude: [...configDefaults.exclude, ...(noKvm ? NEEDS_DEV_KVM : [])],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});
