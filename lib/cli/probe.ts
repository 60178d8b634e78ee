// `kvm-gmem probe`: what this host's KVM offers. Asks KVM_CHECK_EXTENSION of
// /dev/kvm, then creates one VM of each type the kernel lists
// (KVM_CAP_VM_TYPES) and asks its fd, because the per-VM answers are the
// ones that hold (MEMORY_ATTRIBUTES is 0 on a default VM, for instance).
// Then runs the known-defect probes (lib/kvm/defects.ts) and, with
// --require, judges what the caller needs against those answers.
import { readdirSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { parseArgs } from 'node:util';
import { type Capabilities } from '../kvm/capabilities.js';
import { KvmError } from '../errors.js';
import { Kvm } from '../kvm/kvm.js';
import { type DefectReport, knownDefects } from '../kvm/defects.js';
import {
  Cap,
  type CapName,
  CapSince,
  GuestMemfdFlag,
  type GuestMemfdFlagName,
  guestMemfdFlagBits,
  guestMemfdFlagSince,
  MemoryAttribute,
  type VmTypeName,
  VmType,
  vmTypeNames,
} from '../binding/uapi.js';
import { alignColumns, type CliIo } from './output.js';

export const PROBE_USAGE = `usage: kvm-gmem probe [--json | --quiet] [--device PATH] [--require REQ[,REQ...]]...
  Prints what this host's KVM offers: the host, the system capabilities, the
  capabilities of one VM of each type the kernel offers, and the known kernel
  defects found on a scratch VM.
  --json          the same report as JSON
  --quiet         no report: only the unmet requirements, on stderr
  --device PATH   the KVM device to open (default /dev/kvm)
  --require REQ   fail (exit 3) unless the kernel offers REQ; repeatable, or comma-separated:
                    CAP                  a capability (GUEST_MEMFD or KVM_CAP_GUEST_MEMFD, any case):
                                         met when /dev/kvm or any VM type answers non-zero
                    vm-type:TYPE         the kernel offers VM type TYPE (KVM_CAP_VM_TYPES)
                    gmem-flag:FLAG       guest_memfd create flag mmap or init-shared (KVM_CAP_GUEST_MEMFD_FLAGS)
                    attr:private         memory attribute PRIVATE (KVM_CAP_MEMORY_ATTRIBUTES)
                    TYPE:CAP, TYPE:gmem-flag:FLAG, TYPE:attr:private
                                         the same, answered by a VM of type TYPE only
Exit status:
0 when the report was made and every requirement is met, also
on a host whose device cannot be opened (no KVM, no permission): the report
then says why and what to do, and lists no capabilities;
2 on a usage error (an unknown requirement lists the valid names) or when
the device is not a KVM device (KVM_GET_API_VERSION fails or is not 12);
3 when a requirement is not met (one line each on stderr: the requirement,
what the kernel answered, the release that added it); without a device no
requirement is met.`;

export interface CapabilityRow {
  /** 'KVM_CAP_USER_MEMORY2' */
  name: string;
  /** The capability number passed to KVM_CHECK_EXTENSION. */
  cap: number;
  /** What KVM_CHECK_EXTENSION returned (0: absent). */
  value: number;
  /** The value, decoded. */
  meaning: string;
  /** The kernel release that introduced the capability. */
  since: string;
}

export interface HostInfo {
  kernelRelease: string;
  device: string;
  /** null when the device could not be opened (see deviceError). */
  apiVersion: number | null;
  /** Why the device could not be opened, and what to do (describeOpenFailure()); null when it was. */
  deviceError: string | null;
  /** Loaded KVM modules (kvm, kvm_intel, kvm_amd, kvm_pvm...), empty if none is visible. */
  kvmModules: string[];
  /** Where kvmModules was read: '/proc/modules', '/sys/module', or null. */
  kvmModulesSource: string | null;
  /** Hardware virtualization flags in /proc/cpuinfo ('vmx', 'svm'); empty under a paravirtualized KVM. */
  cpuVirtualizationFlags: string[];
}

/** What a VM of this type can be used for, from its capabilities. */
export interface VmUses {
  /** KVM_MEM_GUEST_MEMFD memslots (KVM_CAP_GUEST_MEMFD on the VM fd, with USER_MEMORY2). */
  guestMemfdMemslots: boolean;
  /** KVM_SET_MEMORY_ATTRIBUTES with PRIVATE: Vm.setMemoryAttributes / Vm.convert. */
  privateMemory: boolean;
  /** guest_memfd files made with mmap + init-shared: GuestMemfd.map(), backing 'guest-memfd'. */
  mappableGuestMemfd: boolean;
}

export interface VmReport {
  type: VmTypeName;
  /** Absent when the VM could not be created (see error). */
  capabilities?: CapabilityRow[];
  decoded?: Capabilities;
  uses?: VmUses;
  /** Why KVM_CREATE_VM failed for this type. */
  error?: string;
}

/** One --require, judged. */
export interface RequirementResult {
  /** The requirement as written on the command line. */
  given: string;
  /** Its canonical spelling: 'GUEST_MEMFD', 'vm-type:sw-protected', 'sw-protected:gmem-flag:mmap'. */
  requirement: string;
  met: boolean;
  /** What the kernel answered, e.g. "KVM_CAP_MEMORY_ATTRIBUTES: /dev/kvm 0x0, 'default' VM 0x0". */
  answered: string;
  /** The kernel release that introduced what is required. */
  since: string;
}

export interface ProbeReport {
  host: HostInfo;
  /** What /dev/kvm answers; null when it could not be opened (host.deviceError says why). */
  system: { capabilities: CapabilityRow[]; decoded: Capabilities } | null;
  vms: VmReport[];
  /** The known-defect probes (knownDefects() of lib/kvm/defects.ts). */
  defects: readonly DefectReport[];
  /** The --require requirements, in the order given; empty without --require. */
  requirements: RequirementResult[];
}

// --require: KIND:NAME with an optional VM-type scope in front.
export type Requirement = { scope: VmTypeName | null } & (
  { kind: 'cap'; cap: CapName } | { kind: 'vm-type'; type: VmTypeName } | { kind: 'gmem-flag'; flag: GuestMemfdFlagName } | { kind: 'attr'; attr: 'private' }
);

/** An unknown or malformed --require: a usage error (exit 2). */
export class RequirementSyntaxError extends Error {
  override name = 'RequirementSyntaxError';
}

const capNames = Object.keys(Cap) as CapName[];
const flagNames = Object.keys(guestMemfdFlagBits) as GuestMemfdFlagName[];

/** Every requirement the grammar accepts, for the usage error. */
export function validRequirementNames(): string {
  return [
    `capabilities (KVM_CAP_ prefix optional, any case): ${capNames.join(', ')}`,
    `VM types: ${vmTypeNames.map((t) => `vm-type:${t}`).join(', ')}`,
    `guest_memfd create flags: ${flagNames.map((f) => `gmem-flag:${f}`).join(', ')}`,
    'memory attributes: attr:private',
    `scoped to one VM type: TYPE:CAP, TYPE:gmem-flag:FLAG, TYPE:attr:private (TYPE: ${vmTypeNames.join(', ')})`,
  ].join('\n  ');
}

function isVmType(s: string): s is VmTypeName {
  return Object.hasOwn(VmType, s);
}

/** Parses one requirement; throws RequirementSyntaxError. */
export function parseRequirement(text: string): Requirement {
  const parts = text.trim().split(':');
  const bad = (why: string): RequirementSyntaxError =>
    new RequirementSyntaxError(`unknown requirement '${text}' (${why}); valid requirements:\n  ${validRequirementNames()}`);
  let scope: VmTypeName | null = null;
  const first = (parts[0] ?? '').toLowerCase();
  if (parts.length > 1 && isVmType(first)) {
    scope = first;
    parts.shift();
  }
  if (parts.length === 1) {
    const name = (parts[0] ?? '').toUpperCase().replace(/^KVM_CAP_/, '');
    if (!Object.hasOwn(Cap, name)) throw bad(name === '' ? 'empty' : 'no such capability');
    return { scope, kind: 'cap', cap: name as CapName };
  }
  if (parts.length !== 2) throw bad('too many parts');
  const kind = (parts[0] ?? '').toLowerCase();
  const value = (parts[1] ?? '').toLowerCase();
  switch (kind) {
    case 'vm-type':
      if (scope !== null) throw bad('a VM type cannot be scoped to a VM type');
      if (!isVmType(value)) throw bad('no such VM type');
      return { scope, kind: 'vm-type', type: value };
    case 'gmem-flag':
      if (!Object.hasOwn(guestMemfdFlagBits, value)) throw bad('no such guest_memfd create flag');
      return { scope, kind: 'gmem-flag', flag: value as GuestMemfdFlagName };
    case 'attr':
      if (value !== 'private') throw bad('no such memory attribute');
      return { scope, kind: 'attr', attr: 'private' };
    default:
      throw bad(`no such kind '${parts[0] ?? ''}'`);
  }
}

/** Parses the --require values (each comma-separated); throws RequirementSyntaxError. */
export function parseRequirements(values: readonly string[]): { given: string; req: Requirement }[] {
  return values.flatMap((v) => v.split(',')).map((given) => ({ given: given.trim(), req: parseRequirement(given) }));
}

export function requirementName(r: Requirement): string {
  const scope = r.scope === null ? '' : `${r.scope}:`;
  switch (r.kind) {
    case 'cap':
      return `${scope}${r.cap}`;
    case 'vm-type':
      return `vm-type:${r.type}`;
    case 'gmem-flag':
      return `${scope}gmem-flag:${r.flag}`;
    case 'attr':
      return `${scope}attr:${r.attr}`;
  }
}

/** Judges one requirement against the report's answers. */
export function judgeRequirement(report: Pick<ProbeReport, 'host' | 'system' | 'vms'>, given: string, r: Requirement): RequirementResult {
  const requirement = requirementName(r);
  const device = report.host.device;
  if (report.system === null) {
    const since =
      r.kind === 'vm-type'
        ? CapSince.VM_TYPES
        : r.kind === 'gmem-flag'
          ? guestMemfdFlagSince[r.flag]
          : CapSince[r.kind === 'cap' ? r.cap : 'MEMORY_ATTRIBUTES'];
    return { given, requirement, met: false, answered: `${device} cannot be opened: ${report.host.deviceError ?? 'unknown error'}`, since };
  }
  const system = report.system;
  if (r.kind === 'vm-type') {
    const bits = system.capabilities.find((c) => c.cap === Cap.VM_TYPES)?.value ?? 0;
    const offered = system.decoded.vmTypes;
    return {
      given,
      requirement,
      met: offered.includes(r.type),
      answered: `KVM_CAP_VM_TYPES: ${device} 0x${bits.toString(16)}, types ${offered.join(', ')}`,
      since: CapSince.VM_TYPES,
    };
  }
  const cap: CapName = r.kind === 'cap' ? r.cap : r.kind === 'gmem-flag' ? 'GUEST_MEMFD_FLAGS' : 'MEMORY_ATTRIBUTES';
  const bit = r.kind === 'gmem-flag' ? guestMemfdFlagBits[r.flag] : r.kind === 'attr' ? MemoryAttribute.PRIVATE : null;
  const since = r.kind === 'gmem-flag' ? guestMemfdFlagSince[r.flag] : CapSince[cap];
  const hexCap = decoders[cap].hex === true;
  const fmt = (v: number): string => (hexCap ? `0x${v.toString(16)}` : String(v));
  const valueOf = (rows: CapabilityRow[] | undefined): number | undefined => rows?.find((c) => c.cap === Cap[cap])?.value;
  const holds = (v: number | undefined): boolean => v !== undefined && (bit === null ? v !== 0 : (v & bit) !== 0);
  const answers: string[] = [];
  let met = false;
  if (r.scope === null) {
    const sys = valueOf(system.capabilities);
    answers.push(`${device} ${sys === undefined ? '?' : fmt(sys)}`);
    met ||= holds(sys);
  }
  const vms = r.scope === null ? report.vms : report.vms.filter((v) => v.type === r.scope);
  for (const vm of vms) {
    const v = valueOf(vm.capabilities);
    answers.push(v === undefined ? `'${vm.type}' VM: KVM_CREATE_VM failed (${vm.error ?? 'unknown error'})` : `'${vm.type}' VM ${fmt(v)}`);
    met ||= holds(v);
  }
  if (r.scope !== null && vms.length === 0) answers.push(`no '${r.scope}' VM: the kernel offers ${system.decoded.vmTypes.join(', ')}`);
  return { given, requirement, met, answered: `KVM_CAP_${cap}: ${answers.join(', ')}`, since };
}

/** The one line printed for an unmet requirement. */
export function describeUnmet(r: RequirementResult): string {
  return `kvm-gmem probe: requirement ${r.requirement} not met: ${r.answered} (added in Linux ${r.since})`;
}

const hypercallNames: Record<number, string> = { 12: 'KVM_HC_MAP_GPA_RANGE' };

function bitNames(v: number, names: (bit: number) => string): string {
  const out: string[] = [];
  for (let bit = 0; bit < 32; bit++) if ((v >>> bit) & 1) out.push(names(bit));
  return out.join(', ');
}

const vmTypeByNumber = new Map<number, string>(Object.entries(VmType).map(([n, v]) => [v, n]));

/** How each capability's value reads; `hex` marks bit masks. */
const decoders: Record<CapName, { hex?: boolean; meaning: (v: number) => string }> = {
  NR_MEMSLOTS: { meaning: (v) => (v > 0 ? `${v} memslot ids per address space` : 'not reported') },
  READONLY_MEM: { meaning: (v) => (v ? 'KVM_MEM_READONLY memslots' : 'no read-only memslots') },
  MULTI_ADDRESS_SPACE: { meaning: (v) => (v > 1 ? `${v} address spaces (1 is SMM)` : '1 address space') },
  EXIT_HYPERCALL: { hex: true, meaning: (v) => (v ? `exits for ${bitNames(v, (b) => hypercallNames[b] ?? `hypercall ${b}`)}` : 'no hypercall exits') },
  USER_MEMORY2: { meaning: (v) => (v ? 'KVM_SET_USER_MEMORY_REGION2' : 'no KVM_SET_USER_MEMORY_REGION2') },
  MEMORY_FAULT_INFO: { meaning: (v) => (v ? 'KVM_EXIT_MEMORY_FAULT exits' : 'no memory-fault exits') },
  MEMORY_ATTRIBUTES: {
    hex: true,
    meaning: (v) => (v ? bitNames(v, (b) => (1 << b === MemoryAttribute.PRIVATE ? 'PRIVATE' : `bit ${b}`)) : 'no memory attributes (no private memory)'),
  },
  GUEST_MEMFD: { meaning: (v) => (v ? 'KVM_CREATE_GUEST_MEMFD, KVM_MEM_GUEST_MEMFD' : 'no guest_memfd memslots') },
  VM_TYPES: { hex: true, meaning: (v) => (v ? `types: ${bitNames(v, (b) => vmTypeByNumber.get(b) ?? `type ${b}`)}` : "only 'default'") },
  PRE_FAULT_MEMORY: { meaning: (v) => (v ? 'KVM_PRE_FAULT_MEMORY' : 'no KVM_PRE_FAULT_MEMORY') },
  GUEST_MEMFD_FLAGS: {
    hex: true,
    meaning: (v) =>
      v
        ? `create flags: ${bitNames(v, (b) => (1 << b === GuestMemfdFlag.MMAP ? 'mmap' : 1 << b === GuestMemfdFlag.INIT_SHARED ? 'init-shared' : `bit ${b}`))}`
        : 'no create flags',
  },
};

function capabilityRows(check: (cap: number) => number): CapabilityRow[] {
  return (Object.keys(Cap) as CapName[]).map((name) => {
    const value = check(Cap[name]);
    return { name: `KVM_CAP_${name}`, cap: Cap[name], value, meaning: decoders[name].meaning(value), since: CapSince[name] };
  });
}

function usesOf(c: Capabilities): VmUses {
  const both = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED;
  return {
    guestMemfdMemslots: c.userMemory2 && c.guestMemfd,
    privateMemory: c.memoryAttributes.private,
    mappableGuestMemfd: (c.guestMemfdFlagBits & both) === both,
  };
}

function kvmModules(): { names: string[]; source: string | null } {
  const isKvm = (n: string): boolean => n === 'kvm' || n.startsWith('kvm_');
  try {
    const names = readFileSync('/proc/modules', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[0] ?? '')
      .filter(isKvm);
    return { names: names.sort(), source: '/proc/modules' };
  } catch {
    // No /proc/modules (a kernel without module support): /sys/module also
    // lists built-in modules that have parameters.
  }
  try {
    return { names: readdirSync('/sys/module').filter(isKvm).sort(), source: '/sys/module' };
  } catch {
    return { names: [], source: null };
  }
}

function cpuVirtualizationFlags(): string[] {
  try {
    const flags = /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.split(/\s+/) ?? [];
    return ['vmx', 'svm'].filter((f) => flags.includes(f));
  } catch {
    return [];
  }
}

/**
 * Builds the report. A device that cannot be opened (missing, no permission)
 * gives a report without capabilities that says why; a device that opens
 * but is not KVM throws what Kvm.open throws.
 */
export function probe(device = '/dev/kvm', requirements: readonly { given: string; req: Requirement }[] = []): ProbeReport {
  const mods = kvmModules();
  const hostOf = (apiVersion: number | null, deviceError: string | null): HostInfo => ({
    kernelRelease: release(),
    device,
    apiVersion,
    deviceError,
    kvmModules: mods.names,
    kvmModulesSource: mods.source,
    cpuVirtualizationFlags: cpuVirtualizationFlags(),
  });
  let opened: Kvm;
  try {
    opened = Kvm.open(device);
  } catch (e) {
    if (!(e instanceof KvmError && e.syscall === 'open')) throw e;
    const host = hostOf(null, describeOpenFailure(e, device));
    const judged = requirements.map(({ given, req }) => judgeRequirement({ host, system: null, vms: [] }, given, req));
    return { host, system: null, vms: [], defects: [], requirements: judged };
  }
  using kvm = opened;
  const host = hostOf(kvm.apiVersion, null);
  const system = { capabilities: capabilityRows((c) => kvm.checkExtension(c)), decoded: kvm.capabilities() };
  const vms = system.decoded.vmTypes.map((type): VmReport => {
    try {
      using vm = kvm.createVm({ type });
      const decoded = vm.capabilities();
      return { type, capabilities: capabilityRows((c) => vm.checkExtension(c)), decoded, uses: usesOf(decoded) };
    } catch (e) {
      return { type, error: e instanceof Error ? e.message.split('\n')[0] : String(e) };
    }
  });
  const defects = knownDefects(kvm);
  const judged = requirements.map(({ given, req }) => judgeRequirement({ host, system, vms }, given, req));
  return { host, system, vms, defects, requirements: judged };
}

/**
 * The one line printed when the device cannot be used: the cause and what to
 * do about it.
 */
export function describeOpenFailure(error: unknown, device: string): string {
  if (error instanceof KvmError && error.syscall === 'open') {
    const cause = `cannot open ${device}: ${error.code}`;
    switch (error.code) {
      case 'EACCES':
      case 'EPERM':
        return `${cause} (permission denied): add your user to the 'kvm' group (sudo usermod -aG kvm "$USER", then log in again) or run as root`;
      case 'ENOENT':
      case 'ENXIO':
      case 'ENODEV':
        return (
          `${cause} (${error.code === 'ENOENT' ? 'no such file or directory' : 'no such device'}): no KVM on this host: ` +
          'load kvm_intel or kvm_amd (modprobe), enable virtualization (VT-x/AMD-V) in the firmware, or on a VM or CI runner enable nested virtualization'
        );
      default:
        return error.message.split('\n')[0] ?? cause;
    }
  }
  const msg = error instanceof Error ? error.message.split('\n')[0] : String(error);
  return `${device} does not work: ${msg}`;
}

function table(rows: CapabilityRow[]): string[] {
  const hexNames = new Set((Object.keys(decoders) as CapName[]).filter((n) => decoders[n].hex).map((n) => `KVM_CAP_${n}`));
  return alignColumns([
    ['capability', 'value', 'meaning', 'absent: added in'],
    ...rows.map((r) => [r.name, hexNames.has(r.name) ? `0x${r.value.toString(16)}` : String(r.value), r.meaning, r.value === 0 ? `Linux ${r.since}` : '']),
  ]);
}

function yesNo(ok: boolean, yes: string, no: string): string {
  return ok ? `yes${yes ? ` (${yes})` : ''}` : `no: ${no}`;
}

/** The report as the table people read. */
export function formatReport(r: ProbeReport): string {
  const h = r.host;
  const lines: string[] = ['Host'];
  lines.push(
    ...alignColumns([
      ['kernel', `Linux ${h.kernelRelease}`],
      ['device', r.system === null ? `${h.device}: unavailable` : `${h.device} (KVM_GET_API_VERSION ${h.apiVersion})`],
      ['kvm modules', h.kvmModules.length ? `${h.kvmModules.join(', ')} (from ${h.kvmModulesSource})` : 'none visible'],
      ['cpu flags', h.cpuVirtualizationFlags.length ? h.cpuVirtualizationFlags.join(', ') : 'no vmx/svm (a paravirtualized KVM, or virtualization hidden)'],
      ['vm types', r.system === null ? 'none (no device)' : r.system.decoded.vmTypes.join(', ')],
    ]).map((l) => `  ${l}`),
  );
  if (r.system === null) {
    lines.push('', 'No KVM capabilities: the device cannot be opened', `  ${h.deviceError ?? 'unknown error'}`);
    if (h.kvmModules.length > 0)
      lines.push(`  (KVM modules are loaded but ${h.device} is not there for this process: the module may have declined to bind, see dmesg)`);
    lines.push(...requirementLines(r));
    return lines.join('\n') + '\n';
  }
  lines.push('', `System capabilities (KVM_CHECK_EXTENSION on ${h.device})`, ...table(r.system.capabilities).map((l) => `  ${l}`));
  for (const vm of r.vms) {
    lines.push('', `VM type '${vm.type}' (KVM_CHECK_EXTENSION on the VM fd)`);
    if (vm.error !== undefined || vm.capabilities === undefined || vm.uses === undefined) {
      lines.push(`  KVM_CREATE_VM failed: ${vm.error ?? 'unknown error'}`);
      continue;
    }
    lines.push(...table(vm.capabilities).map((l) => `  ${l}`), '');
    const flags = vm.decoded?.guestMemfdFlags.join(', ') ?? '';
    lines.push(
      ...alignColumns([
        ['guest_memfd memslots', yesNo(vm.uses.guestMemfdMemslots, '', 'needs KVM_CAP_GUEST_MEMFD on the VM fd')],
        [
          'private memory',
          yesNo(
            vm.uses.privateMemory,
            'setMemoryAttributes, convert',
            "needs KVM_CAP_MEMORY_ATTRIBUTES with PRIVATE (a 'sw-protected' VM on a kernel built with CONFIG_KVM_SW_PROTECTED_VM)",
          ),
        ],
        [
          'mappable guest_memfd',
          yesNo(vm.uses.mappableGuestMemfd, flags, `needs KVM_CAP_GUEST_MEMFD_FLAGS with mmap and init-shared (Linux ${CapSince.GUEST_MEMFD_FLAGS}+)`),
        ],
      ]).map((l) => `  ${l}`),
    );
  }
  lines.push('', 'Known kernel defects (raw ioctls on a scratch VM, closed afterwards)');
  for (const d of r.defects) {
    const found = d.present === true ? 'PRESENT' : d.present === false ? 'absent' : d.present;
    lines.push(
      `  ${d.id}: ${found}${d.vmType ? ` (probed on a '${d.vmType}' VM)` : ''}`,
      ...alignColumns([
        ['defect', d.summary],
        ['probe', d.detail],
        ['affected', d.affected],
        ['not affected', d.notAffected],
      ]).map((l) => `    ${l}`),
    );
  }
  lines.push(...requirementLines(r));
  return lines.join('\n') + '\n';
}

function requirementLines(r: ProbeReport): string[] {
  if (r.requirements.length === 0) return [];
  return [
    '',
    'Requirements (--require)',
    ...alignColumns([
      ['requirement', 'met', 'kernel answered', 'added in'],
      ...r.requirements.map((q) => [q.requirement, q.met ? 'yes' : 'NO', q.answered, `Linux ${q.since}`]),
    ]).map((l) => `  ${l}`),
  ];
}

/** Runs `kvm-gmem probe ARGS`; returns the exit status. */
export function runProbe(args: string[], io: CliIo): number {
  let values: { json?: boolean; quiet?: boolean; device?: string; require?: string[]; help?: boolean };
  try {
    ({ values } = parseArgs({
      args,
      options: {
        json: { type: 'boolean' },
        quiet: { type: 'boolean', short: 'q' },
        device: { type: 'string' },
        require: { type: 'string', multiple: true },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    io.err(`kvm-gmem probe: ${(e as Error).message}\n${PROBE_USAGE}\n`);
    return 2;
  }
  if (values.help) {
    io.out(`${PROBE_USAGE}\n`);
    return 2;
  }
  if (values.json && values.quiet) {
    io.err(`kvm-gmem probe: --json and --quiet exclude each other\n${PROBE_USAGE}\n`);
    return 2;
  }
  let requirements: { given: string; req: Requirement }[];
  try {
    requirements = parseRequirements(values.require ?? []);
  } catch (e) {
    if (!(e instanceof RequirementSyntaxError)) throw e;
    io.err(`kvm-gmem probe: ${e.message}\n`);
    return 2;
  }
  const device = values.device ?? '/dev/kvm';
  let report: ProbeReport;
  try {
    report = probe(device, requirements);
  } catch (e) {
    io.err(`kvm-gmem probe: ${describeOpenFailure(e, device)}\n`);
    return 2;
  }
  if (!values.quiet) io.out(values.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
  const unmet = report.requirements.filter((q) => !q.met);
  for (const q of unmet) io.err(`${describeUnmet(q)}\n`);
  return unmet.length > 0 ? 3 : 0;
}
