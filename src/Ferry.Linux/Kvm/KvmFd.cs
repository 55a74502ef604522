using System.Runtime.InteropServices;

namespace Ferry.Linux.Kvm;

/// <summary>
/// Owns one KVM file descriptor (/dev/kvm, a VM or a vCPU); releasing it calls <c>close</c>. The three kinds are
/// separate types so a vCPU fd cannot be passed where a VM fd is meant. Every ioctl goes through
/// <see cref="Ioctl(uint, nint, string)"/>, which keeps the fd alive for the call (DangerousAddRef) so a
/// concurrent Dispose cannot close it and let the number be reused mid-call.
/// </summary>
public abstract class KvmFd : SafeHandle
{
    private protected KvmFd()
        : base(invalidHandleValue: -1, ownsHandle: true)
    {
    }

    /// <inheritdoc/>
    public override bool IsInvalid => handle < 0;

    /// <summary>The raw fd number, for poll/epoll or logging. Valid only while this handle is open.</summary>
    public int Fd => (int)handle;

    /// <summary>Take ownership of an fd a syscall returned.</summary>
    internal void Adopt(int fd) => SetHandle(fd);

    /// <summary>
    /// ioctl with a pointer or value argument; returns its non-negative result, or throws
    /// <see cref="LinuxException"/> whose <see cref="LinuxException.Call"/> is <paramref name="name"/> (e.g. "KVM_GET_MSRS").
    /// </summary>
    public int Ioctl(uint request, nint arg, string name)
    {
        int result = TryIoctl(request, arg, out int errno);
        if (result < 0)
        {
            throw new LinuxException(name, errno);
        }

        return result;
    }

    /// <summary>ioctl that reports failure as -1 and <paramref name="errno"/> instead of throwing (for KVM_RUN's EINTR).</summary>
    public int TryIoctl(uint request, nint arg, out int errno)
    {
        bool added = false;
        try
        {
            DangerousAddRef(ref added);
            int result = Libc.ioctl((int)handle, request, (nuint)arg);
            errno = result < 0 ? Marshal.GetLastPInvokeError() : 0;
            return result;
        }
        finally
        {
            if (added)
            {
                DangerousRelease();
            }
        }
    }

    /// <inheritdoc/>
    protected override bool ReleaseHandle() => Libc.close((int)handle) == 0;
}

/// <summary>The /dev/kvm fd.</summary>
public sealed class KvmSystemFd : KvmFd
{
    /// <summary>An empty (invalid) handle; public because SafeHandle types need it (CA1419).</summary>
    public KvmSystemFd()
    {
    }
}

/// <summary>A VM fd (from KVM_CREATE_VM).</summary>
public sealed class KvmVmFd : KvmFd
{
    /// <summary>An empty (invalid) handle; public because SafeHandle types need it (CA1419).</summary>
    public KvmVmFd()
    {
    }
}

/// <summary>A vCPU fd (from KVM_CREATE_VCPU).</summary>
public sealed class KvmVcpuFd : KvmFd
{
    /// <summary>An empty (invalid) handle; public because SafeHandle types need it (CA1419).</summary>
    public KvmVcpuFd()
    {
    }
}
