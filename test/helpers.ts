// Small helpers shared by the feature tests: open /dev/kvm, read what this
// host offers (once, at collection time, so tests can skip visibly), assert a
// rule error or a kernel errno, and snapshot a VM's tables so a test can show
// that a refused request changed nothing; and a signal storm for the calls
// the kernel abandons with EINTR. A test that needs a capability gates
// through `gate(needs.x(...), ...)`: one call gives the boolean and the name
// suffix, whose [req: ...] token the test VM's skip guard re-checks.
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';
import { type Capabilities, type GuestMemfd, Kvm, KvmError, type KvmRuleError, raw, type Vm, type VmTypeName } from '../lib/index.js';
import { errnoName } from '../lib/errors.js';
import { CapSince, type CapName, type GuestMemfdFlagName, guestMemfdFlagBits, MemoryAttribute } from '../lib/binding/uapi.js';
import { ENV_FACTS, type EnvFact, evaluate, type Facts, probeFacts, type Req, serialize } from './support/requirements.js';

export function openKvm(): Kvm {
  return Kvm.open();
}

let host: Capabilities | undefined;

/** /dev/kvm's capabilities (asked once per test file). */
export function hostCaps(): Capabilities {
  if (host === undefined) {
    using kvm = openKvm();
    host = kvm.capabilities();
  }
  return host;
}

const perType = new Map<VmTypeName, Capabilities | undefined>();

/** The capabilities a VM of `type` answers on its own fd, or undefined when the host does not offer the type. */
export function vmCaps(type: VmTypeName): Capabilities | undefined {
  if (!perType.has(type)) {
    let caps: Capabilities | undefined;
    if (hostCaps().vmTypes.includes(type)) {
      using kvm = openKvm();
      using vm = kvm.createVm({ type });
      caps = vm.capabilities();
    }
    perType.set(type, caps);
  }
  return perType.get(type);
}

/**
 * The VM type whose memslots accept KVM_MEM_GUEST_MEMFD: the default VM on
 * 6.18 (this host), 'sw-protected' on 6.12 (the test VM), else undefined.
 */
export function guestMemfdVmType(): VmTypeName | undefined {
  return (['default', 'sw-protected'] as const).find((t) => vmCaps(t)?.guestMemfd === true);
}

let facts: Facts | undefined;

/** What this kernel and environment offer, from the probe's report (once per test file). */
export function kernelFacts(): Facts {
  return (facts ??= probeFacts());
}

/** One requirement of a test: the data (for the token), a phrase for the name, and whether it holds here. */
export interface Need {
  readonly req: Req;
  /** e.g. "KVM_CAP_GUEST_MEMFD on a 'sw-protected' VM" */
  readonly text: string;
  readonly met: boolean;
}

const need = (req: Req, text: string): Need => ({ req, text, met: evaluate(req, kernelFacts()) });
const where = (on: 'kvm' | VmTypeName): string => (on === 'kvm' ? 'on /dev/kvm' : `on a '${on}' VM`);
const flagMask = (flags: GuestMemfdFlagName | readonly GuestMemfdFlagName[]): number =>
  (typeof flags === 'string' ? [flags] : flags).reduce((m, f) => m | guestMemfdFlagBits[f], 0);

/**
 * The requirements a test may declare. Capabilities are asked where they
 * hold: on the VM fd of the given type (a type the kernel does not offer
 * answers nothing), or on /dev/kvm with 'kvm'.
 */
export const needs = {
  /** KVM_CHECK_EXTENSION(cap) > 0 (or >= min, or with every bit of mask) on `on`. */
  cap(cap: CapName, on: 'kvm' | VmTypeName = 'kvm', o: { min?: number; mask?: number; text?: string } = {}): Need {
    const req: Req = { kind: 'cap', cap, on };
    if (o.min !== undefined) req.min = o.min;
    if (o.mask !== undefined) req.mask = o.mask;
    const cond = o.mask !== undefined ? ` with 0x${o.mask.toString(16)}` : o.min !== undefined ? ` >= ${o.min}` : '';
    return need(req, o.text ?? `KVM_CAP_${cap}${cond} ${where(on)} (Linux ${CapSince[cap]}+)`);
  },
  /** KVM_CREATE_VM accepts the type (KVM_CAP_VM_TYPES lists it). */
  vmType(type: VmTypeName): Need {
    return need({ kind: 'vm-type', type }, `the '${type}' VM type (KVM_CAP_VM_TYPES)`);
  },
  /** Memslots v2 (KVM_SET_USER_MEMORY_REGION2) on a VM of `type`. */
  userMemory2(type: VmTypeName = 'default'): Need {
    return needs.cap('USER_MEMORY2', type, { text: `KVM_CAP_USER_MEMORY2 ${where(type)}` });
  },
  /** guest_memfd memslots on a VM of `type`: KVM_CAP_GUEST_MEMFD and KVM_CAP_USER_MEMORY2 on its fd. */
  guestMemfd(type: VmTypeName = 'default'): Need {
    return need({ kind: 'all', reqs: [needs.userMemory2(type).req, { kind: 'cap', cap: 'GUEST_MEMFD', on: type }] }, `KVM_CAP_GUEST_MEMFD ${where(type)}`);
  },
  /** KVM_CAP_MEMORY_ATTRIBUTES with the attribute on a VM of `type` ('kvm': the ioctl exists at all). */
  memoryAttributes(attr: 'private' | 'any', type: VmTypeName | 'kvm'): Need {
    if (attr === 'any') return needs.cap('MEMORY_ATTRIBUTES', type, { text: `KVM_SET_MEMORY_ATTRIBUTES (KVM_CAP_MEMORY_ATTRIBUTES ${where(type)})` });
    return needs.cap('MEMORY_ATTRIBUTES', type, { mask: MemoryAttribute.PRIVATE, text: `KVM_CAP_MEMORY_ATTRIBUTES with PRIVATE ${where(type)}` });
  },
  /** KVM_CAP_GUEST_MEMFD_FLAGS offering every one of `flags` on a VM of `type`. */
  gmemFlags(flags: GuestMemfdFlagName | readonly GuestMemfdFlagName[], type: VmTypeName = 'default'): Need {
    const names = (typeof flags === 'string' ? [flags] : flags).map((f) => `'${f}'`).join(' and ');
    return needs.cap('GUEST_MEMFD_FLAGS', type, { mask: flagMask(flags), text: `KVM_CAP_GUEST_MEMFD_FLAGS with ${names} ${where(type)}` });
  },
  preFault(type: VmTypeName = 'default'): Need {
    return needs.cap('PRE_FAULT_MEMORY', type, { text: `KVM_CAP_PRE_FAULT_MEMORY ${where(type)}` });
  },
  /** KVM_CAP_EXIT_HYPERCALL offering hypercall `nr`. */
  exitHypercall(nr: number, on: 'kvm' | VmTypeName = 'kvm'): Need {
    return needs.cap('EXIT_HYPERCALL', on, { mask: 2 ** nr, text: `KVM_CAP_EXIT_HYPERCALL with bit ${nr} ${where(on)}` });
  },
  /** A loaded KVM module (as the probe lists them: /proc/modules or /sys/module). */
  kvmModule(name: string): Need {
    return need({ kind: 'module', name }, `the ${name} KVM module`);
  },
  /** A command on PATH that answers --version. */
  tool(name: string): Need {
    return need({ kind: 'tool', name }, `${name} on PATH`);
  },
  /** Not a capability: network, running outside the test VM, no sanitizer, not root. */
  env(fact: EnvFact): Need {
    return need({ kind: 'env', fact }, ENV_FACTS[fact]);
  },
  /** Runs where `n` does not hold (a test of the refusal, e.g. "runs where the VM answers 0"). */
  not(n: Need, text = `no ${n.text}`): Need {
    return need({ kind: 'not', req: n.req }, text);
  },
  any(text: string, ...ns: Need[]): Need {
    return need({ kind: 'any', reqs: ns.map((n) => n.req) }, text);
  },
  all(text: string, ...ns: Need[]): Need {
    return need({ kind: 'all', reqs: ns.map((n) => n.req) }, text);
  },
};

/**
 * The first VM type the kernel offers for which `pred` holds, and the
 * requirement "some VM type where pred holds" (for gating on it). The
 * candidates are the types a guest of these tests can run on: 'default' and
 * 'sw-protected' (SEV, SNP and TDX VMs need their hardware and a firmware).
 */
export function pickVmType(
  text: string,
  pred: (type: VmTypeName) => Need,
  candidates: readonly VmTypeName[] = ['default', 'sw-protected'],
): { type: VmTypeName | undefined; need: Need } {
  const per = candidates.map((t) => ({ t, n: needs.all(text, needs.vmType(t), pred(t)) }));
  return { type: per.find((p) => p.n.met)?.t, need: needs.any(text, ...per.map((p) => p.n)) };
}

/** A gate: the boolean, the name suffix, and test/describe that skip with it. */
export interface Gate {
  readonly met: boolean;
  /** "(needs A; B) [req: a b]", written into the name whether it runs or skips. */
  readonly suffix: string;
  name(name: string): string;
  test(name: string, fn: () => unknown, timeout?: number): void;
  describe(name: string, fn: () => void): void;
}

/** Gate on every one of `ns` (none: always met). */
export function gate(...ns: Need[]): Gate {
  const met = ns.every((n) => n.met);
  const suffix = ns.length === 0 ? '' : `(needs ${ns.map((n) => n.text).join('; ')}) [req: ${ns.map((n) => serialize(n.req)).join(' ')}]`;
  const name = (n: string): string => (suffix ? `${n} ${suffix}` : n);
  return {
    met,
    suffix,
    name,
    test: (n, fn, timeout) => test.skipIf(!met)(name(n), fn, timeout),
    describe: (n, fn) => describe.skipIf(!met)(name(n), fn),
  };
}

type Class<E> = abstract new (...args: never[]) => E;

/** What `f` throws (the test fails if it throws nothing). */
export function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw, got none');
}

/** Awaits `p`, which must reject with `cls`; returns the error. */
export async function rejection<E>(p: Promise<unknown>, cls: Class<E>): Promise<E> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(cls);
  return err as E;
}

/** The little-endian u64 at the start of `bytes`. */
export function u64(bytes: Uint8Array): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
}

/** Runs `fn`, which must throw `cls` with this `rule`; returns the error. */
export function expectRule<E extends KvmRuleError>(fn: () => unknown, cls: Class<E>, rule: string): E {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${cls.name} [${rule}]`).toBeInstanceOf(cls);
  expect((err as E).rule).toBe(rule);
  return err as E;
}

/** Runs a raw call, which must fail with KvmError `code`; returns the error. */
export function expectKernel(fn: () => unknown, code: string): KvmError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected the kernel to answer ${code}`).toBeInstanceOf(KvmError);
  expect((err as KvmError).code).toBe(code);
  return err as KvmError;
}

/** The kernel, asked the same thing raw, answers the errno the rule predicted. */
export function expectKernelAgrees(rule: KvmRuleError, fn: () => unknown): KvmError {
  expect(rule.kernelErrno, `${rule.rule} predicts an error`).toBeGreaterThan(0);
  return expectKernel(fn, errnoName(rule.kernelErrno));
}

/** A VM's memslots, guest_memfd bindings and attribute ranges as plain data. */
export function tables(vm: Vm, gmems: readonly GuestMemfd[] = []) {
  return {
    memslots: vm.memslots().map((m) => ({
      slot: m.slot,
      addressSpace: m.addressSpace,
      gpa: m.gpa,
      size: m.size,
      flags: m.flags,
      userspaceAddr: m.userspaceAddr,
      guestMemfdOffset: m.guestMemfdOffset,
      backing: m.backing,
    })),
    boundRanges: gmems.map((g) => g.boundRanges()),
    attributeRanges: vm.attributeRanges(),
  };
}

/** A VM and the Kvm it came from, closed together (`using h = newVm()`). */
export interface VmHandle extends Disposable {
  kvm: Kvm;
  vm: Vm;
}

export function newVm(type: VmTypeName = 'default'): VmHandle {
  const kvm = openKvm();
  try {
    const vm = kvm.createVm({ type });
    return {
      kvm,
      vm,
      [Symbol.dispose]: () => {
        vm.close();
        kvm.close();
      },
    };
  } catch (e) {
    kvm.close();
    throw e;
  }
}

/**
 * Runs `f` while a timer signals this thread every 2 ms (raw.withInterrupts).
 * A timer, not another process: on one CPU without kernel preemption (the
 * 6.1 test VM) a sender process cannot run while this thread is inside a
 * syscall, and a shell loop of `kill` there missed KVM_CREATE_VM's window
 * for 90 s. Not a tight interval: with a signal pending at every entry no
 * EINTR-abandoned call could make progress.
 */
export function underSignalStorm<T>(f: () => T): T {
  return raw.withInterrupts(2000, f);
}

/**
 * Calls `f` until it fails with EINTR (true), or until `tries` calls have
 * succeeded and `minMs` has passed (false): a floor of time as well as a
 * count, so a slow machine (QEMU TCG) gets as many chances as a fast one.
 */
export function sawEintr(f: () => void, tries: number, minMs = process.env.TESTVM === '1' ? 90_000 : 20_000): boolean {
  const start = Date.now();
  for (let i = 0; i < tries || Date.now() - start < minMs; i++) {
    try {
      f();
    } catch (e) {
      if (e instanceof KvmError && e.code === 'EINTR') return true;
      throw e;
    }
  }
  return false;
}

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function distIsFresh(dirs: readonly string[]): boolean {
  const walk = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((d) => (d.isDirectory() ? walk(join(dir, d.name)) : [join(dir, d.name)]));
  for (const src of dirs.flatMap((d) => walk(join(root, d))).filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))) {
    const out = join(root, 'dist', src.slice(root.length + 1)).replace(/\.ts$/, '.js');
    try {
      if (statSync(out).mtimeMs < statSync(src).mtimeMs) return false;
    } catch {
      return false;
    }
  }
  return true;
}

/**
 * Builds dist/ from the current sources for tests that run the built
 * library in a child process or worker, unless every .ts file of lib/ (and
 * of `extra` folders, e.g. tools/fuzz) already has a newer build (as in the
 * test VM, where the host built it first and tsc under TCG would take
 * minutes). A compile error fails the caller.
 */
export function ensureDist(extra: readonly string[] = []): void {
  if (distIsFresh(['lib', ...extra])) return;
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.json')], { cwd: root, stdio: 'pipe', encoding: 'utf8' });
  } catch (e) {
    const out = e as { stdout?: string; stderr?: string };
    throw new Error(`tsc -p tsconfig.json failed, so dist/ cannot be used:\n${out.stdout ?? ''}${out.stderr ?? ''}`);
  }
}
