// The files that need /dev/kvm (test/support/dev-kvm.ts): where it cannot be
// used, each is reported here as one skipped test naming /dev/kvm and the
// reason (vitest.config.ts leaves the files out of the run). The list is
// checked against the tree, so a renamed file is not lost.
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';
import { devKvmProblem, NEEDS_DEV_KVM } from './support/dev-kvm.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const problem = devKvmProblem();

describe('test files that need /dev/kvm', () => {
  test('the list names existing test files, each once', () => {
    for (const f of NEEDS_DEV_KVM) expect(existsSync(join(root, f)), f).toBe(true);
    expect(new Set(NEEDS_DEV_KVM).size).toBe(NEEDS_DEV_KVM.length);
    const all = readdirSync(join(root, 'test')).filter((f) => f.endsWith('.test.ts'));
    expect(all.length).toBeGreaterThan(NEEDS_DEV_KVM.length);
  });

  // Where /dev/kvm works the files are in the run and nothing is added here.
  // The token is the skip guard's (test/support/vm-skip-guard.ts).
  if (problem !== undefined) {
    for (const file of NEEDS_DEV_KVM) test.skip(`${file}: every test (needs /dev/kvm: ${problem}) [req: env:dev-kvm]`, () => {});
  }
});
