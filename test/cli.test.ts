// Tests of the `kvm-gmem` command (bin/kvm-gmem.js -> dist/lib/cli/main.js):
// the probe report, as text and as JSON, against what the library itself
// answers; --require judged against the kernel's own answers; the known-defect
// probes against the same raw ioctls issued here; the one-line failures with
// exit statuses. Every expectation is computed from this kernel, so the file
// runs unchanged on every kernel of the test-VM matrix. Usage, and devices
// that cannot be opened, are in cli-usage.test.ts (they need no /dev/kvm).
import { mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { type ProbeReport } from '../lib/cli/probe.js';
import { buildCli, run } from './support/cli-run.js';
import { defectPresent, defectReport, knownDefects } from '../lib/kvm/defects.js';
import { guestMemfdFlagBits, type GuestMemfdFlagName, vmTypeNames } from '../lib/binding/uapi.js';
import { Cap, type CapName, CapSince, KvmError, Kvm, MemFlag, MemoryAttribute, raw, VmType, type VmTypeName } from '../lib/index.js';

beforeAll(buildCli, 300_000);

describe('kvm-gmem probe', () => {
  test('prints the host, the system capabilities and every VM type, and exits 0', () => {
    using kvm = Kvm.open();
    const r = run(['probe']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('Host');
    expect(r.stdout).toContain('/dev/kvm (KVM_GET_API_VERSION 12)');
    expect(r.stdout).toContain('System capabilities (KVM_CHECK_EXTENSION on /dev/kvm)');
    for (const type of kvm.capabilities().vmTypes) expect(r.stdout).toContain(`VM type '${type}'`);
    // One table row per capability, with the value the library reads.
    for (const name of Object.keys(Cap) as CapName[]) {
      const row = r.stdout.split('\n').find((l) => l.trim().startsWith(`KVM_CAP_${name} `));
      expect(row, `row for KVM_CAP_${name}`).toBeDefined();
      const value = kvm.checkExtension(name);
      expect(row).toMatch(new RegExp(`KVM_CAP_${name}\\s+(${value}|0x${value.toString(16)})\\s`));
    }
  });

  test('--json gives the same facts as the library, per VM type', () => {
    using kvm = Kvm.open();
    const r = run(['probe', '--json']);
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as ProbeReport;
    expect(report.host.device).toBe('/dev/kvm');
    expect(report.host.apiVersion).toBe(kvm.apiVersion);
    expect(report.host.deviceError).toBeNull();
    const system = report.system ?? expect.unreachable('a report without its system section');
    expect(system.decoded).toEqual(kvm.capabilities());
    for (const row of system.capabilities) {
      expect(row.value, row.name).toBe(kvm.checkExtension(row.cap));
      expect(row.name).toBe(`KVM_CAP_${Object.entries(Cap).find(([, v]) => v === row.cap)?.[0]}`);
    }
    expect(report.vms.map((v) => v.type)).toEqual(kvm.capabilities().vmTypes);
    for (const v of report.vms) {
      expect(v.error, `VM type ${v.type}`).toBeUndefined();
      using vm = kvm.createVm({ type: v.type });
      const caps = vm.capabilities();
      expect(v.decoded).toEqual(caps);
      for (const row of v.capabilities ?? []) expect(row.value, `${v.type} ${row.name}`).toBe(vm.checkExtension(row.cap));
      expect(v.uses?.privateMemory).toBe(caps.memoryAttributes.private);
    }
  });
});

// What this kernel answers, asked here through the library (not through the
// probe): /dev/kvm and one VM of each type it offers.
interface KernelAnswers {
  system: Record<CapName, number>;
  vms: Map<VmTypeName, Record<CapName, number>>;
  types: VmTypeName[];
}

function kernelAnswers(): KernelAnswers {
  using kvm = Kvm.open();
  const names = Object.keys(Cap) as CapName[];
  const ask = (check: (cap: number) => number): Record<CapName, number> => Object.fromEntries(names.map((n) => [n, check(Cap[n])])) as Record<CapName, number>;
  const types = kvm.capabilities().vmTypes;
  const vms = new Map<VmTypeName, Record<CapName, number>>();
  for (const type of types) {
    using vm = kvm.createVm({ type });
    vms.set(
      type,
      ask((c) => vm.checkExtension(c)),
    );
  }
  return { system: ask((c) => kvm.checkExtension(c)), vms, types };
}

/** Whether `cap` (with `bit`, if given) is answered non-zero by /dev/kvm or any VM, or by the `scope` VM only. */
function answered(a: KernelAnswers, scope: VmTypeName | null, cap: CapName, bit?: number): boolean {
  const holds = (v: number | undefined): boolean => v !== undefined && (bit === undefined ? v !== 0 : (v & bit) !== 0);
  if (scope !== null) return holds(a.vms.get(scope)?.[cap]);
  return holds(a.system[cap]) || [...a.vms.values()].some((v) => holds(v[cap]));
}

/** Every requirement the grammar offers (scoped ones for every VM type, offered or not), with whether this kernel meets it. */
function requirementCases(a: KernelAnswers): { req: string; met: boolean }[] {
  const cases: { req: string; met: boolean }[] = [];
  for (const cap of Object.keys(Cap) as CapName[]) cases.push({ req: cap, met: answered(a, null, cap) });
  cases.push({ req: 'kvm_cap_guest_memfd', met: answered(a, null, 'GUEST_MEMFD') });
  cases.push({ req: 'Guest_Memfd_Flags', met: answered(a, null, 'GUEST_MEMFD_FLAGS') });
  for (const type of vmTypeNames) cases.push({ req: `vm-type:${type}`, met: a.types.includes(type) });
  for (const flag of Object.keys(guestMemfdFlagBits) as GuestMemfdFlagName[]) {
    cases.push({ req: `gmem-flag:${flag}`, met: answered(a, null, 'GUEST_MEMFD_FLAGS', guestMemfdFlagBits[flag]) });
  }
  cases.push({ req: 'attr:private', met: answered(a, null, 'MEMORY_ATTRIBUTES', MemoryAttribute.PRIVATE) });
  for (const type of vmTypeNames) {
    cases.push({ req: `${type}:GUEST_MEMFD`, met: answered(a, type, 'GUEST_MEMFD') });
    cases.push({ req: `${type}:KVM_CAP_MEMORY_ATTRIBUTES`, met: answered(a, type, 'MEMORY_ATTRIBUTES') });
    cases.push({ req: `${type}:gmem-flag:init-shared`, met: answered(a, type, 'GUEST_MEMFD_FLAGS', guestMemfdFlagBits['init-shared']) });
    cases.push({ req: `${type}:attr:private`, met: answered(a, type, 'MEMORY_ATTRIBUTES', MemoryAttribute.PRIVATE) });
  }
  return cases;
}

describe('kvm-gmem probe --require', () => {
  const answers = kernelAnswers();
  const cases = requirementCases(answers);
  const met = cases.filter((c) => c.met).map((c) => c.req);
  // On this host (6.18, kvm_pvm): MEMORY_ATTRIBUTES 0, PRE_FAULT_MEMORY 0, only the default VM.
  const preferredUnmet = ['MEMORY_ATTRIBUTES', 'PRE_FAULT_MEMORY', 'vm-type:sw-protected', 'GUEST_MEMFD', 'vm-type:tdx', 'vm-type:sev'];
  const unmet = preferredUnmet.find((r) => cases.find((c) => c.req === r)?.met === false) ?? cases.find((c) => !c.met)?.req;

  test('every requirement is judged as the kernel answers it, in order, in the JSON', () => {
    const r = run(['probe', '--json', '--require', cases.map((c) => c.req).join(',')]);
    const report = JSON.parse(r.stdout) as ProbeReport;
    expect(report.requirements.map((q) => q.given)).toEqual(cases.map((c) => c.req));
    for (const [i, q] of report.requirements.entries()) {
      expect(q.met, q.given).toBe(cases[i]?.met);
      expect(q.since, q.given).toMatch(/^\d+\.\d+/);
      expect(q.answered, q.given).toMatch(/^KVM_CAP_[A-Z_0-9]+: /);
    }
    const unmetCount = cases.filter((c) => !c.met).length;
    expect(r.status).toBe(unmetCount > 0 ? 3 : 0);
    expect(r.stderr.split('\n').filter(Boolean)).toHaveLength(unmetCount);
  });

  test('requirements that are met: exit 0, the report with a Requirements section, nothing on stderr', () => {
    expect(met).toContain('vm-type:default');
    const r = run(['probe', '--require', met.join(','), '--require', 'vm-type:default']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('System capabilities');
    expect(r.stdout).toContain('Requirements (--require)');
    expect(r.stdout).toMatch(/^ {2}vm-type:default\s+yes\s+KVM_CAP_VM_TYPES: \/dev\/kvm 0x/m);
    expect(r.stdout).not.toMatch(/^ {2}\S+\s+NO\s/m);
  });

  test('GUEST_MEMFD, USER_MEMORY2 and gmem-flag:mmap (all met on the 6.18 host): exit 0 where offered, else 3 naming each missing one', () => {
    const reqs = ['GUEST_MEMFD', 'KVM_CAP_USER_MEMORY2', 'gmem-flag:mmap'];
    const missing = reqs.filter(
      (q) =>
        !answered(
          answers,
          null,
          q === 'gmem-flag:mmap' ? 'GUEST_MEMFD_FLAGS' : (q.replace('KVM_CAP_', '') as CapName),
          q === 'gmem-flag:mmap' ? guestMemfdFlagBits.mmap : undefined,
        ),
    );
    const r = run(['probe', '--quiet', '--require', reqs.join(',')]);
    expect(r.stdout).toBe('');
    expect(r.status).toBe(missing.length ? 3 : 0);
    const lines = r.stderr.split('\n').filter(Boolean);
    expect(lines).toHaveLength(missing.length);
    missing.forEach((q, i) => expect(lines[i]).toContain(`requirement ${q.replace('KVM_CAP_', '')} not met`));
  });

  test('a requirement that is not met: exit 3 and one line naming it, the kernel answers and the release', () => {
    expect(unmet, 'some requirement is unmet on every kernel (no host offers both sev and tdx)').toBeDefined();
    const req = unmet as string;
    const r = run(['probe', '--require', `vm-type:default,${req}`]);
    expect(r.status).toBe(3);
    expect(r.stdout).toContain('Requirements (--require)');
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(1);
    const line = lines[0] ?? '';
    expect(line).toContain(`requirement ${req} not met`);
    expect(line).toMatch(/\(added in Linux \d+\.\d+\)$/);
    if (req.startsWith('vm-type:')) {
      expect(line).toContain(`KVM_CAP_VM_TYPES: /dev/kvm 0x${answers.system.VM_TYPES.toString(16)}, types ${answers.types.join(', ')}`);
    } else {
      const cap = req as CapName;
      expect(line).toContain(`KVM_CAP_${cap}: /dev/kvm `);
      // Every VM type's answer is part of the line.
      for (const type of answers.types) expect(line).toContain(`'${type}' VM `);
      expect(line).toContain(`(added in Linux ${CapSince[cap]})`);
    }
  });

  test('a scoped requirement for a VM type the kernel does not offer: not met, saying which types it offers', () => {
    const absent = vmTypeNames.find((t) => !answers.types.includes(t)) as VmTypeName;
    const r = run(['probe', '--quiet', '--require', `${absent}:MEMORY_ATTRIBUTES`]);
    expect(r.status).toBe(3);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd()).toBe(
      `kvm-gmem probe: requirement ${absent}:MEMORY_ATTRIBUTES not met: KVM_CAP_MEMORY_ATTRIBUTES: no '${absent}' VM: the kernel offers ${answers.types.join(', ')} (added in Linux 6.8)`,
    );
  });

  test('--quiet: no report; nothing at all when every requirement is met', () => {
    const ok = run(['probe', '--quiet', '--require', 'vm-type:default']);
    expect(ok).toEqual({ status: 0, stdout: '', stderr: '' });
    const bad = run(['probe', '-q', '--require', unmet as string]);
    expect(bad.status).toBe(3);
    expect(bad.stdout).toBe('');
    expect(bad.stderr.trimEnd().split('\n')).toHaveLength(1);
  });

  test('without --require the JSON has an empty requirements array', () => {
    const r = run(['probe', '--json']);
    expect(r.status).toBe(0);
    expect((JSON.parse(r.stdout) as ProbeReport).requirements).toEqual([]);
  });
});

const GMEM_SIZE = 0x4000n;
const OVERFLOW_OFFSET = 0x7ffffffffffff000n;

/**
 * The defect, asked of the kernel here with the raw ioctls: on the first VM
 * type whose VM fd takes guest_memfd memslots, does KVM_SET_USER_MEMORY_REGION2
 * bind 4 pages of a 4-page guest_memfd at offset 0x7ffffffffffff000?
 */
function overflowBindAccepted(): { present: boolean | 'not-applicable'; vmType: VmTypeName | null } {
  using kvm = Kvm.open();
  for (const type of ['default', 'sw-protected'] as const) {
    if (!kvm.capabilities().vmTypes.includes(type)) continue;
    using vm = raw.createVm(kvm, VmType[type]);
    if (raw.checkExtension(vm, Cap.GUEST_MEMFD) <= 0 || raw.checkExtension(vm, Cap.USER_MEMORY2) <= 0) continue;
    using gmem = raw.createGuestMemfd(vm, { size: GMEM_SIZE });
    const region = { slot: 0, flags: MemFlag.GUEST_MEMFD, guestPhysAddr: 0, memorySize: GMEM_SIZE, userspaceAddr: 0, guestMemfd: gmem.fd };
    const del = { slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0, guestMemfdOffset: 0, guestMemfd: 0 };
    raw.setUserMemoryRegion2(vm, { ...region, guestMemfdOffset: 0 }); // the control
    raw.setUserMemoryRegion2(vm, del);
    try {
      raw.setUserMemoryRegion2(vm, { ...region, guestMemfdOffset: OVERFLOW_OFFSET });
    } catch (e) {
      expect(e).toBeInstanceOf(KvmError);
      expect((e as KvmError).code).toBe('EINVAL');
      return { present: false, vmType: type };
    }
    raw.setUserMemoryRegion2(vm, del);
    return { present: true, vmType: type };
  }
  return { present: 'not-applicable', vmType: null };
}

describe('known-defect probes', () => {
  const truth = overflowBindAccepted();

  // First in this describe: the in-process cache is still empty here.
  test('knownDefects() leaves no fd behind, is cached per device, and defectPresent() agrees with the raw ioctls', () => {
    using kvm = Kvm.open();
    const fds = readdirSync('/proc/self/fd').length;
    const reports = knownDefects(kvm);
    expect(readdirSync('/proc/self/fd').length).toBe(fds);
    expect(reports.map((d) => d.id)).toEqual(['gmem-bind-offset-overflow']);
    const d = reports[0];
    expect(d?.present).toBe(truth.present);
    expect(d?.vmType).toBe(truth.vmType);
    expect(Object.isFrozen(d)).toBe(true);
    // Cached: the same objects, from a Kvm or from the device path.
    expect(knownDefects(kvm)).toBe(reports);
    expect(knownDefects('/dev/kvm')).toBe(reports);
    expect(defectReport('/dev/kvm', 'gmem-bind-offset-overflow')).toBe(d);
    expect(defectPresent(kvm, 'gmem-bind-offset-overflow')).toBe(truth.present === true);
    kvm.close();
    // A closed Kvm whose device was probed still answers (no fd needed).
    expect(defectPresent(kvm, 'gmem-bind-offset-overflow')).toBe(truth.present === true);
  });

  test('bad targets: an unknown id is a TypeError, a missing device throws its KvmError; a symlink to the device shares its cache entry', () => {
    expect(() => defectReport('/dev/kvm', 'no-such-defect' as 'gmem-bind-offset-overflow')).toThrow(TypeError);
    expect(() => knownDefects('/nonexistent/kvm')).toThrow(KvmError);
    const dir = mkdtempSync(path.join(tmpdir(), 'kvm-gmem-defects-'));
    try {
      const link = path.join(dir, 'kvm');
      symlinkSync('/dev/kvm', link);
      expect(knownDefects(link)).toBe(knownDefects('/dev/kvm'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the probe lists gmem-bind-offset-overflow as the raw ioctls here answer, in the text and the JSON, and exits 0', () => {
    const j = run(['probe', '--json']);
    expect(j.status).toBe(0);
    const d = (JSON.parse(j.stdout) as ProbeReport).defects.find((x) => x.id === 'gmem-bind-offset-overflow');
    expect(d?.present).toBe(truth.present);
    expect(d?.vmType).toBe(truth.vmType);
    expect(d?.summary).toContain('0x7ffffffffffff000');
    expect(d?.affected).toContain('6.18');
    expect(d?.notAffected).toContain('6.12');
    expect(d?.kernelSource).toContain('kvm_gmem_bind()');
    if (truth.present === true) expect(d?.detail).toMatch(/^accepted: .*, then deleted$/);
    if (truth.present === false) expect(d?.detail).toMatch(/^refused with EINVAL: /);
    if (truth.present === 'not-applicable') expect(d?.detail).toContain('no VM type accepts guest_memfd memslots');
    const t = run(['probe']);
    expect(t.status).toBe(0);
    const word = truth.present === true ? 'PRESENT' : truth.present === false ? 'absent' : 'not-applicable';
    expect(t.stdout).toContain('Known kernel defects');
    expect(t.stdout).toContain(`  gmem-bind-offset-overflow: ${word}${truth.vmType ? ` (probed on a '${truth.vmType}' VM)` : ''}\n`);
  });
});
