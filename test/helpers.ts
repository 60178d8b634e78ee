// Small helpers shared by the feature tests: open /dev/kvm, read what this
// host offers (once, at collection time, so tests can skip visibly), assert a
// rule error or a kernel errno, and snapshot a VM's tables so a test can show
// that a refused request changed nothing; and a signal storm for the calls
// the kernel abandons with EINTR.
import { spawn } from 'node:child_process';
import { expect } from 'vitest';
import {
  type Capabilities, errnoName, type GuestMemfd, Kvm, KvmError, type KvmRuleError, type Vm, type VmTypeName,
} from '../lib/index.js';

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

type Class<E> = abstract new (...args: never[]) => E;

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
      slot: m.slot, addressSpace: m.addressSpace, gpa: m.gpa, size: m.size, flags: m.flags,
      userspaceAddr: m.userspaceAddr, guestMemfdOffset: m.guestMemfdOffset, backing: m.backing,
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
    return { kvm, vm, [Symbol.dispose]: () => { vm.close(); kvm.close(); } };
  } catch (e) {
    kvm.close();
    throw e;
  }
}

/**
 * Runs `f` while another process sends this one SIGUSR2 about every
 * millisecond (handled, so each one is pending in whatever syscall is
 * running). Not a tight loop: with a signal pending at every entry no
 * EINTR-abandoned call could make progress.
 */
export async function underSignalStorm<T>(f: () => T): Promise<T> {
  let first: () => void = () => {};
  const started = new Promise<void>((res) => (first = res));
  const onSignal = (): void => first();
  process.on('SIGUSR2', onSignal);
  const storm = spawn('bash', ['-c', `while kill -USR2 ${process.pid} 2>/dev/null; do sleep 0.001; done`], { stdio: 'ignore' });
  try {
    await started;
    return f();
  } finally {
    storm.kill();
    process.off('SIGUSR2', onSignal);
  }
}

/** Calls `f` until it fails with EINTR (true) or `tries` calls succeeded (false). */
export function sawEintr(f: () => void, tries: number): boolean {
  for (let i = 0; i < tries; i++) {
    try {
      f();
    } catch (e) {
      if (e instanceof KvmError && e.code === 'EINTR') return true;
      throw e;
    }
  }
  return false;
}
