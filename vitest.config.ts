import { defineConfig } from 'vitest/config';

// Native-addon tests run in forked processes: a crash or a leaked fd stays in
// its own process, and KVM refuses VM ioctls from any process but the VM's
// creator, so tests must never share a VM across processes.
export default defineConfig({
  test: {
    pool: 'forks',
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});
