// Small helpers shared by the feature tests: open /dev/kvm, read what this
// host offers (once, at collection time, so tests can skip visibly), assert a
// rule error or a kernel errno, and snapshot a VM's tables so a test can show
// that a refused request changed nothing.
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
