// The conformance suite (dist/selftests, the kernel's guest_memfd selftests
// ported) against the real kernel, through `kvm-gmem selftest NAME` as a
// user runs it: each port must pass or skip as a whole, except a check
// whose failure is a known defect of this kernel (defects.ts), which must
// then fail, naming its check. In the test-VM matrix this runs the suite on
// every kernel (npm run test:vm).
import { spawnSync } from 'node:child_process';
import { beforeAll, describe, expect, test } from 'vitest';
import { Kvm } from '../lib/index.js';
import { defectPresent, type DefectId } from '../lib/kvm/defects.js';
import { ensureDist } from './helpers.js';
import { bin, root } from './support/cli-run.js';

// A check whose failure stands for a known kernel defect, by its ID.
const DEFECT_OF: Record<string, DefectId> = { 'GM-9': 'gmem-bind-offset-overflow' };

const PORTS = [
  'guest_memfd_test',
  'memslot_perf_test',
  'pre_fault_memory_test',
  'private_mem_conversions_test',
  'private_mem_kvm_exits_test',
  'set_memory_region_test',
  'vm_types_test',
];

beforeAll(() => ensureDist(['selftests']), 300_000);

interface Outcome {
  status: number | null;
  stdout: string;
  failed: string[];
  passed: string[];
}

function runPort(name: string): Outcome {
  const r = spawnSync(process.execPath, [bin, 'selftest', name], { cwd: root, encoding: 'utf8', timeout: 900_000 });
  if (r.error) throw r.error;
  const subtests = r.stdout.split('\n').filter((l) => /^ {4}(not )?ok \d+ /.test(l));
  const title = (l: string): string => l.replace(/^ {4}(not )?ok \d+ /, '');
  return {
    status: r.status,
    stdout: r.stdout,
    failed: subtests.filter((l) => l.startsWith('    not ok')).map(title),
    passed: subtests.filter((l) => l.startsWith('    ok') && !l.includes(' # SKIP')).map(title),
  };
}

describe('the conformance suite on this kernel (kvm-gmem selftest)', () => {
  using kvm = Kvm.open();
  const present = new Set(Object.entries(DEFECT_OF).flatMap(([id, defect]) => (defectPresent(kvm.path, defect) ? [id] : [])));

  test('every port is in the suite', () => {
    const r = spawnSync(process.execPath, [bin, 'selftest', '--list'], { cwd: root, encoding: 'utf8' });
    expect(r.stdout.split('\n').filter(Boolean)).toEqual(expect.arrayContaining(PORTS));
  });

  for (const name of PORTS) {
    test(`${name}: passes (or skips, naming the requirement) but for the checks of this kernel's known defects`, () => {
      const o = runPort(name);
      // A failure the port itself pins on the kernel, from what the kernel
      // answered: a deadline it ran past (ETIME from the package, where the C
      // test hangs), or an exit no right kernel gives (SR-2's shutdown).
      const pinned = (t: string): boolean => o.stdout.split('\n').some((l) => l.includes(`# ${t}: `) && l.includes(' kernel defect: '));
      const unexplained = o.failed.filter((t) => !present.has(t.split(' ')[0] as string) && !pinned(t));
      expect(unexplained, o.stdout).toEqual([]);
      // A known defect present here must show: its check fails, it does not pass.
      expect(o.passed.filter((t) => present.has(t.split(' ')[0] as string))).toEqual([]);
      expect(o.status, o.stdout).toBe(o.failed.length > 0 ? 1 : o.passed.length > 0 ? 0 : 4);
      if (o.status === 4) expect(o.stdout).toMatch(/# SKIP (Requirement not met: |.+)/);
    }, 900_000);
  }
});
