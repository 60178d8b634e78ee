import { defineConfig } from 'vitest/config';
import base from './vitest.config.js';

// The test-VM tier (npm run test:vm, tools/testvm/matrix.ts): every file
// `npm test` runs, inside each test kernel of the matrix (6.1, 6.12, 7.3).
// test/support/vm-skip-guard.ts fails the run if a test skipped for a
// capability the running kernel offers, or skipped without saying why.
export default defineConfig({
  cacheDir: '/tmp/vitest-cache',
  test: {
    pool: 'forks',
    include: base.test?.include ?? ['test/**/*.test.ts'],
    globalSetup: ['./test/support/vm-holder.ts'],
    testTimeout: 300_000,
    hookTimeout: 300_000,
    // TCG is slow and the VM has one CPU: run files one after another.
    fileParallelism: false,
    reporters: ['default', './test/support/vm-skip-guard.ts'],
  },
});
