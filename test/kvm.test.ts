// /dev/kvm and VM creation: Kvm.open, the API version, capability questions
// (by number and by name, on /dev/kvm and on a VM fd), VM types, and
// close-on-exec on every fd the package hands out.
import { describe, expect, test } from 'vitest';
import { Cap, type CapName, ClosedError, Kvm, KvmError, MemoryAttribute, MissingCapabilityError, raw, VmType, type VmTypeName } from '../lib/index.js';
import { gate, guestMemfdVmType, hostCaps, needs, openKvm, sawEintr, underSignalStorm, vmCaps } from './helpers.js';

const caps = hostCaps();
const capNames = Object.keys(Cap) as CapName[];
const vmTypeNames = Object.keys(VmType) as VmTypeName[];
// A VM type this host does not offer (on this host: every type but 'default').
const lacking = vmTypeNames.map((t) => ({ t, need: needs.not(needs.vmType(t), `no '${t}' VM type (KVM_CAP_VM_TYPES)`) }));
const lackingType = lacking.find((l) => l.need.met)?.t;
const lacksAType = needs.any('a VM type KVM_CAP_VM_TYPES does not list', ...lacking.map((l) => l.need));
const swProtected = needs.vmType('sw-protected');

describe('Kvm.open', () => {
  test('opens /dev/kvm by default and checks KVM_GET_API_VERSION is 12', () => {
    using kvm = openKvm();
    expect(kvm.path).toBe('/dev/kvm');
    expect(kvm.apiVersion).toBe(12);
    expect(kvm.closed).toBe(false);
    expect(kvm.fd).toBeGreaterThanOrEqual(0);
  });

  test('a missing path gives KvmError ENOENT from open, with the path in request', () => {
    const path = '/dev/no-such-kvm-device';
    let err: unknown;
    try {
      Kvm.open(path);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KvmError);
    const k = err as KvmError;
    expect(k.code).toBe('ENOENT');
    expect(k.errno).toBe(2);
    expect(k.syscall).toBe('open');
    expect(k.request).toEqual({ path });
    expect(k.message).toContain(path);
  });

  test('close() is idempotent and use after close throws ClosedError', () => {
    const kvm = openKvm();
    kvm.close();
    kvm.close();
    expect(kvm.closed).toBe(true);
    expect(() => kvm.checkExtension('USER_MEMORY2')).toThrow(ClosedError);
    expect(() => kvm.createVm()).toThrow(ClosedError);
    expect(() => kvm.fd).toThrow(ClosedError);
  });
});

describe('checkExtension and capabilities() on /dev/kvm', () => {
  test('by number and by name give the same answer as the raw ioctl', () => {
    using kvm = openKvm();
    for (const name of capNames) {
      const byName = kvm.checkExtension(name);
      expect(kvm.checkExtension(Cap[name]), name).toBe(byName);
      expect(raw.checkExtension(kvm, Cap[name]), name).toBe(byName);
    }
  });

  test('checkExtensions(): one call answers every cap (by number and by name) as the raw ioctl does one by one', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    const mixed = capNames.flatMap((n) => [n, Cap[n]]);
    const long = [...mixed, ...mixed, ...mixed, 99_999]; // longer than the reused buffers
    for (const [f, list] of [
      [kvm, mixed],
      [vm, mixed],
      [kvm, long],
      [vm, long],
    ] as const) {
      expect(f.checkExtensions(list)).toEqual(list.map((c) => raw.checkExtension(f, typeof c === 'number' ? c : Cap[c])));
    }
    expect(vm.checkExtensions([])).toEqual([]);
    expect(vm.checkExtensions([Cap.NR_MEMSLOTS])).toEqual([raw.checkExtension(vm, Cap.NR_MEMSLOTS)]);
    for (const bad of [-1, 1.5, NaN, 2 ** 31, 'NO_SUCH_CAP', null]) {
      expect(() => vm.checkExtensions([Cap.USER_MEMORY2, bad as never]), String(bad)).toThrow(TypeError);
    }
    vm.close();
    expect(() => vm.checkExtensions([Cap.USER_MEMORY2])).toThrow(ClosedError);
    expect(() => vm.checkExtension(Cap.USER_MEMORY2)).toThrow(ClosedError);
  });

  test('an unknown capability number answers 0', () => {
    using kvm = openKvm();
    expect(kvm.checkExtension(99_999)).toBe(0);
  });

  test('capabilities() decodes what raw KVM_CHECK_EXTENSION answers for each cap', () => {
    using kvm = openKvm();
    const c = kvm.capabilities();
    const r = (cap: CapName) => raw.checkExtension(kvm, Cap[cap]);
    expect(c.userMemory2).toBe(r('USER_MEMORY2') > 0);
    expect(c.guestMemfd).toBe(r('GUEST_MEMFD') > 0);
    expect(c.memoryFaultInfo).toBe(r('MEMORY_FAULT_INFO') > 0);
    expect(c.memoryAttributes.bits).toBe(r('MEMORY_ATTRIBUTES'));
    expect(c.memoryAttributes.private).toBe((r('MEMORY_ATTRIBUTES') & MemoryAttribute.PRIVATE) !== 0);
    const types = r('VM_TYPES');
    expect(c.vmTypes).toEqual(types === 0 ? ['default'] : vmTypeNames.filter((t) => types & (1 << VmType[t])));
    expect(c.guestMemfdFlagBits).toBe(r('GUEST_MEMFD_FLAGS'));
    expect(c.guestMemfdFlags).toEqual([...(r('GUEST_MEMFD_FLAGS') & 1 ? ['mmap'] : []), ...(r('GUEST_MEMFD_FLAGS') & 2 ? ['init-shared'] : [])]);
    expect(c.preFaultMemory).toBe(r('PRE_FAULT_MEMORY') > 0);
    expect(c.nrMemslots).toBe(r('NR_MEMSLOTS'));
    expect(c.addressSpaces).toBe(Math.max(1, r('MULTI_ADDRESS_SPACE')));
    expect(c.readonlyMem).toBe(r('READONLY_MEM') > 0);
    expect(c.exitHypercall).toBe(r('EXIT_HYPERCALL'));
    // Asked once: the same object comes back.
    expect(kvm.capabilities()).toBe(c);
  });

  gate(needs.cap('USER_MEMORY2'), needs.cap('GUEST_MEMFD')).test(
    'this host offers what the package needs (KVM_CAP_USER_MEMORY2, KVM_CAP_GUEST_MEMFD, the default VM type)',
    () => {
      expect(caps.userMemory2).toBe(true);
      expect(caps.guestMemfd).toBe(true);
      expect(caps.vmTypes).toContain('default');
      expect(caps.nrMemslots).toBeGreaterThan(0);
    },
  );
});

describe('createVm', () => {
  test('creates a default VM when no type is given', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    expect(vm.type).toBe('default');
    expect(vm.fd).toBeGreaterThanOrEqual(0);
    expect(vm.fd).not.toBe(kvm.fd);
    expect(vm.memslots()).toEqual([]);
  });

  test('under a storm of signals raw KVM_CREATE_VM fails with EINTR now and then; createVm() repeats it and always succeeds', () => {
    using kvm = openKvm();
    underSignalStorm(() => {
      // mmu_notifier_register -> mm_take_all_locks gives up on any pending signal.
      expect(sawEintr(() => raw.createVm(kvm, VmType.default).close(), 5000)).toBe(true);
      for (let i = 0; i < 200; i++) kvm.createVm().close();
    });
  });

  test('an unknown VM type name is a TypeError', () => {
    using kvm = openKvm();
    expect(() => kvm.createVm({ type: 'confidential' as VmTypeName })).toThrow(TypeError);
    expect(() => kvm.createVm({ type: 'confidential' as VmTypeName })).toThrow(/unknown VM type 'confidential'/);
  });

  gate(lacksAType).test(`a VM type this host lacks ('${lackingType}') is MissingCapabilityError naming KVM_CAP_VM_TYPES`, () => {
    using kvm = openKvm();
    const type = lackingType as VmTypeName;
    let err: unknown;
    try {
      kvm.createVm({ type });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MissingCapabilityError);
    const m = err as MissingCapabilityError;
    expect(m.capability).toBe('KVM_CAP_VM_TYPES');
    expect(m.since).toBe('6.8');
    expect(m.message).toContain(type);
    // The kernel agrees: KVM_CREATE_VM with that type is EINVAL.
    let kerr: unknown;
    try {
      raw.createVm(kvm, VmType[type]).close();
    } catch (e) {
      kerr = e;
    }
    expect(kerr).toBeInstanceOf(KvmError);
    expect((kerr as KvmError).code).toBe('EINVAL');
  });

  gate(needs.not(swProtected, "no 'sw-protected' VM type (KVM_CAP_VM_TYPES)")).test(
    "'sw-protected' is refused with MissingCapabilityError where not offered",
    () => {
      using kvm = openKvm();
      expect(() => kvm.createVm({ type: 'sw-protected' })).toThrow(MissingCapabilityError);
      expect(() => kvm.createVm({ type: 'sw-protected' })).toThrow(/KVM_CAP_VM_TYPES/);
    },
  );

  gate(swProtected).test("creates a 'sw-protected' VM where offered", () => {
    using kvm = openKvm();
    using vm = kvm.createVm({ type: 'sw-protected' });
    expect(vm.type).toBe('sw-protected');
    expect(vm.capabilities().memoryAttributes.private).toBe(true);
  });
});

describe('Vm.checkExtension and Vm.capabilities()', () => {
  test('are asked of the VM fd', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    for (const name of capNames) {
      const onVm = raw.checkExtension(vm, Cap[name]);
      expect(vm.checkExtension(name), name).toBe(onVm);
      expect(vm.checkExtension(Cap[name]), name).toBe(onVm);
    }
    const c = vm.capabilities();
    expect(c.memoryAttributes.bits).toBe(raw.checkExtension(vm.fd, Cap.MEMORY_ATTRIBUTES));
    expect(c.guestMemfd).toBe(raw.checkExtension(vm.fd, Cap.GUEST_MEMFD) > 0);
    expect(c.guestMemfdFlagBits).toBe(raw.checkExtension(vm.fd, Cap.GUEST_MEMFD_FLAGS));
    expect(c.nrMemslots).toBe(raw.checkExtension(vm.fd, Cap.NR_MEMSLOTS));
    expect(c.addressSpaces).toBe(Math.max(1, raw.checkExtension(vm.fd, Cap.MULTI_ADDRESS_SPACE)));
    expect(c.readonlyMem).toBe(raw.checkExtension(vm.fd, Cap.READONLY_MEM) > 0);
    expect(vm.capabilities()).toBe(c);
  });

  test('a default VM does not offer PRIVATE memory attributes', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    expect(vm.capabilities().memoryAttributes.private).toBe(false);
  });

  gate(swProtected).test("a 'sw-protected' VM answers KVM_CAP_MEMORY_ATTRIBUTES = PRIVATE on its fd, a default VM 0", () => {
    const sw = vmCaps('sw-protected');
    const def = vmCaps('default');
    expect(sw?.memoryAttributes.bits).toBe(MemoryAttribute.PRIVATE);
    expect(def?.memoryAttributes.bits).toBe(0);
  });
});

describe('close-on-exec', () => {
  test('the /dev/kvm fd and the VM fd are close-on-exec', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    expect(raw.isCloexec(kvm)).toBe(true);
    expect(raw.isCloexec(vm.fd)).toBe(true);
    using rawVm = raw.createVm(kvm, VmType.default);
    expect(raw.isCloexec(rawVm)).toBe(true);
  });

  gate(needs.cap('GUEST_MEMFD')).test('guest_memfd fds are close-on-exec although the kernel installs them without', () => {
    using kvm = openKvm();
    using vm = kvm.createVm({ type: guestMemfdVmType() ?? 'default' });
    using gmem = vm.createGuestMemfd({ size: 4096 });
    expect(raw.isCloexec(gmem.fd)).toBe(true);
    using rawGmem = raw.createGuestMemfd(vm, { size: 4096 });
    expect(raw.isCloexec(rawGmem)).toBe(true);
  });
});
