// /dev/kvm: the system-level entry point. Opens the device, checks the API
// version, answers capability questions and creates VMs.
import { readFileSync } from 'node:fs';
import { type Capabilities, capNumber, checkExtensions, readCapabilities } from './capabilities.js';
import { MissingCapabilityError, retryOnEintr, withRequest } from './errors.js';
import { native } from './native.js';
import { FdResource } from './resource.js';
import { Cap, type CapName, CapSince, errno, KVM_API_VERSION, TASK_SIZE_MAX_4LEVEL, TASK_SIZE_MAX_5LEVEL, VmType, type VmTypeName } from './uapi.js';
import { Vm, type VmParent } from './vm.js';
import { type CpuidEntry, decodeCpuid } from './x86/regs.js';

export interface CreateVmOptions {
  /** VM type; default 'default'. */
  type?: VmTypeName;
}

// The kernel clears the la57 cpu flag when it runs with 4-level paging, so
// the flag tells which user address space limit access_ok() applies.
function taskSizeMax(): bigint {
  try {
    return /^flags\s*:.*\bla57\b/m.test(readFileSync('/proc/cpuinfo', 'utf8')) ? TASK_SIZE_MAX_5LEVEL : TASK_SIZE_MAX_4LEVEL;
  } catch {
    return TASK_SIZE_MAX_4LEVEL;
  }
}

export class Kvm extends FdResource implements VmParent {
  readonly path: string;
  readonly apiVersion: number;
  readonly taskSizeMax: bigint = taskSizeMax();
  #caps: Capabilities | undefined;
  // KVM_CHECK_EXTENSION with the fd bound in: the cheapest ioctl, where the
  // argument conversion is a visible share of the cost (tools/bench).
  #check: ((cap: number) => number) | undefined;
  #mmapSize: number | undefined;
  #cpuid: CpuidEntry[] | undefined;
  #vmParent: VmParent | undefined;

  private constructor(fd: number, path: string) {
    super(fd, 'Kvm');
    this.path = path;
    try {
      this.apiVersion = native.getApiVersion(fd);
    } catch (e) {
      this.close();
      throw e;
    }
    if (this.apiVersion !== KVM_API_VERSION) {
      this.close();
      throw new Error(`${path}: KVM_GET_API_VERSION is ${this.apiVersion}, expected ${KVM_API_VERSION}`);
    }
  }

  /** Opens the KVM device (O_RDWR|O_CLOEXEC) and checks KVM_GET_API_VERSION is 12. */
  static open(path = '/dev/kvm'): Kvm {
    return new Kvm(withRequest({ path }, () => native.openDevice(path)), path);
  }

  /** KVM_CHECK_EXTENSION on /dev/kvm. Prefer Vm.checkExtension for per-VM answers. */
  checkExtension(cap: number | CapName): number {
    const fd = this.use('check an extension');
    return (this.#check ??= native.checkExtensionBind(fd))(capNumber(cap));
  }

  /** KVM_CHECK_EXTENSION on /dev/kvm for each cap, in one call into the addon. */
  checkExtensions(caps: readonly (number | CapName)[]): number[] {
    return checkExtensions(this.use('check extensions'), caps);
  }

  /** @internal VmParent */
  systemCheck(cap: number): number {
    return this.checkExtension(cap);
  }

  /** System-wide capabilities (asked once). */
  capabilities(): Capabilities {
    this.use('read capabilities');
    this.#caps ??= readCapabilities(this.fd);
    return this.#caps;
  }

  /** KVM_CREATE_VM. The VM's fd is close-on-exec and owned by the result. */
  createVm(options: CreateVmOptions = {}): Vm {
    const fd = this.use('create a VM');
    const type = options.type ?? 'default';
    const bits = VmType[type];
    if (bits === undefined) throw new TypeError(`createVm: unknown VM type '${String(type)}' (known: ${Object.keys(VmType).join(', ')})`);
    if (type !== 'default' && !this.capabilities().vmTypes.includes(type)) {
      throw new MissingCapabilityError('KVM_CAP_VM_TYPES', CapSince.VM_TYPES, `a '${type}' VM (this kernel offers: ${this.capabilities().vmTypes.join(', ')})`);
    }
    const parent = this.vmParent();
    const vmFd = withRequest({ type: bits }, () => retryOnEintr(() => native.createVm(fd, bits)),
      (n) => (n === errno.EINVAL ? ['the VM type is not supported by this host (CPU or kernel config)'] : []));
    return new Vm(vmFd, type, parent);
  }

  // What a VM asks of /dev/kvm, asked once while this Kvm is open and
  // remembered: the kernel keeps a VM alive without its /dev/kvm fd, and so
  // must the package, so a VM keeps working after this Kvm is closed.
  private vmParent(): VmParent {
    if (this.#vmParent === undefined) {
      const guestMemfd = this.checkExtension(Cap.GUEST_MEMFD);
      const mmapSize = this.vcpuMmapSize();
      const cpuid = this.supportedCpuid();
      this.#vmParent = {
        taskSizeMax: this.taskSizeMax,
        vcpuMmapSize: () => mmapSize,
        supportedCpuid: () => cpuid.map((e) => ({ ...e })),
        systemCheck: (cap) => (cap === Cap.GUEST_MEMFD ? guestMemfd : this.checkExtension(cap)),
      };
    }
    return this.#vmParent;
  }

  /** KVM_GET_VCPU_MMAP_SIZE: size of each vCPU's kvm_run area (asked once). */
  vcpuMmapSize(): number {
    const fd = this.use('read the vCPU mmap size');
    this.#mmapSize ??= native.getVcpuMmapSize(fd);
    return this.#mmapSize;
  }

  /** KVM_GET_SUPPORTED_CPUID: the CPUID a vCPU can be given (asked once). */
  supportedCpuid(): CpuidEntry[] {
    const fd = this.use('read supported CPUID');
    this.#cpuid ??= decodeCpuid(native.getSupportedCpuid(fd));
    return this.#cpuid.map((e) => ({ ...e }));
  }
}
