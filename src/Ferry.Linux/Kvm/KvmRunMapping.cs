using System.Runtime.InteropServices;

namespace Ferry.Linux.Kvm;

/// <summary>
/// Owns the <c>kvm_run</c> mapping of one vCPU: <c>mmap(vcpu_fd, 0, KVM_GET_VCPU_MMAP_SIZE)</c>, shared with KVM.
/// Page 0 is <see cref="kvm_run"/>; page KVM_PIO_PAGE_OFFSET holds port-I/O data; later pages hold the coalesced
/// MMIO ring. Releasing the handle calls <c>munmap</c>.
/// </summary>
/// <remarks>
/// Only the vCPU's own thread touches it between KVM_RUN calls, except <c>immediate_exit</c>, which another thread
/// sets (a single byte store) before kicking the vCPU with a signal.
/// </remarks>
public sealed unsafe class KvmRunMapping : SafeHandle
{
    /// <summary>An empty (invalid) handle; use <see cref="KvmVcpu"/>. Public because SafeHandle types need it (CA1419).</summary>
    public KvmRunMapping()
        : base(invalidHandleValue: 0, ownsHandle: true)
    {
    }

    /// <summary>Bytes mapped (KVM_GET_VCPU_MMAP_SIZE: 3 pages on x86-64 hosts measured so far).</summary>
    public int Length { get; private set; }

    /// <inheritdoc/>
    public override bool IsInvalid => handle == 0 || handle == Libc.MAP_FAILED;

    /// <summary>The shared struct. Valid while this mapping is open.</summary>
    // SAFETY: the mapping is at least sizeof(kvm_run) (checked in Map) and page aligned, so the pointer is valid and aligned.
    public kvm_run* Run => (kvm_run*)handle;

    /// <summary>Map <paramref name="length"/> bytes of <paramref name="vcpu"/>'s shared area.</summary>
    public static KvmRunMapping Map(KvmVcpuFd vcpu, int length)
    {
        if (length < sizeof(kvm_run))
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"KVM_GET_VCPU_MMAP_SIZE is smaller than kvm_run ({sizeof(kvm_run)} bytes)");
        }

        var mapping = new KvmRunMapping();
        bool added = false;
        try
        {
            vcpu.DangerousAddRef(ref added);
            nint address = Libc.mmap(0, (nuint)length, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, vcpu.Fd, 0);
            if (address == Libc.MAP_FAILED)
            {
                throw Libc.LastError("mmap");
            }

            mapping.SetHandle(address);
            mapping.Length = length;
            return mapping;
        }
        finally
        {
            if (added)
            {
                vcpu.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// The data of the current KVM_EXIT_IO: <c>io.count * io.size</c> bytes at <c>io.data_offset</c>. For OUT the guest's
    /// bytes; for IN fill it before the next KVM_RUN. Throws if KVM's offsets point outside the mapping.
    /// </summary>
    public Span<byte> IoData()
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        ref readonly kvm_run.Io io = ref Run->io;
        ulong bytes = (ulong)io.count * io.size;
        if (io.data_offset > (ulong)Length || bytes > (ulong)Length - io.data_offset)
        {
            throw new InvalidOperationException($"KVM_EXIT_IO data {io.data_offset}+{bytes} outside the {Length}-byte kvm_run mapping");
        }

        // SAFETY: the range was bounds-checked against the mapping just above.
        return new Span<byte>((byte*)handle + (nint)io.data_offset, (int)bytes);
    }

    /// <summary>
    /// The data of the current KVM_EXIT_MMIO: <c>mmio.len</c> (at most 8) bytes of <c>mmio.data</c>.
    /// </summary>
    public Span<byte> MmioData()
    {
        ObjectDisposedException.ThrowIf(IsClosed, this);
        uint len = Run->mmio.len;
        if (len > 8)
        {
            throw new InvalidOperationException($"KVM_EXIT_MMIO length {len} exceeds the 8-byte data field");
        }

        // SAFETY: data is an 8-byte field inside the mapped kvm_run and len <= 8.
        return new Span<byte>(Run->mmio.data, (int)len);
    }

    /// <inheritdoc/>
    protected override bool ReleaseHandle() => Libc.munmap(handle, (nuint)Length) == 0;
}
